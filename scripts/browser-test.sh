#!/usr/bin/env bash
# The web app in a real browser: Debian's chromium driven by playwright-core (tests/browser), against the
# built `sonicgw serve` on port 0 with a temporary data directory. Screenshots of each step of the last
# run are in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# The binary as `cargo test` builds it (with the dev-dependencies' features): `cargo build --bin` would
# build it with other features, recompiling it and its web stack after every `cargo test` and back.
cargo test --locked --no-run --test it -q
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
target="${CARGO_TARGET_DIR:-target}"
SONICGW_BIN="$target/debug/sonicgw" timeout 180 node --test --test-reporter=spec tests/browser/webapp.test.mjs
