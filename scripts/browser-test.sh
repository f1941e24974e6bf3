#!/usr/bin/env bash
# The web app in a real browser: Debian's chromium driven by playwright-core (tests/browser), against the
# built `sonicgw serve` on port 0 with a temporary data directory. Screenshots of each step of the last
# run are in target/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --bin sonicgw
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
target="${CARGO_TARGET_DIR:-target}"
SONICGW_BIN="$target/debug/sonicgw" timeout 180 node --test --test-reporter=spec tests/browser/webapp.test.mjs
