#!/usr/bin/env bash
# Runs the whole test suite. The PostgreSQL and Redis tests talk to the real servers on this machine
# (PostgreSQL 127.0.0.1:5432 with trust auth, Redis 127.0.0.1:6379); this starts them if they are down.
# Then the web app in a real browser (scripts/browser-test.sh: Debian's chromium, playwright-core), the
# API fuzzed from its OpenAPI document (scripts/api-fuzz.sh: schemathesis) and a mixed load
# (scripts/load.sh: locust), each bounded. The parser fuzz targets' seeds and kept crashes are replayed by
# `cargo test` (tests/it/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/services.sh

# The deploy files (Kubernetes manifests, compose.yaml): validated, not run here.
scripts/validate-deploy.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
scripts/browser-test.sh
scripts/api-fuzz.sh
# A mixed load on the debug build, bounded (the release run with 200 clients is in BENCHMARKS.md).
SONICGW_BIN="${CARGO_TARGET_DIR:-target}/debug/sonicgw" scripts/load.sh 50 20
# Parser fuzzing (scripts/fuzz.sh) is not part of this run: its first build is a cold, instrumented release
# build of every dependency (over 30 minutes on a 2-core machine), past the CI budget. Run it on its own.
