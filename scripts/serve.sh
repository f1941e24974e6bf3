#!/usr/bin/env bash
# Runs the service on the embedded default (SQLite and files under ./sonicgw-data). Extra arguments go to
# `sonicgw serve`, e.g. `scripts/serve.sh --config sonicgw.toml`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -- serve "$@"
