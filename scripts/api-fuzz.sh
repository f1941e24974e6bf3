#!/usr/bin/env bash
# API fuzzing from the OpenAPI document: schemathesis (PyPI, pinned, in a venv under the cargo target
# directory) against the built `sonicgw serve` on the embedded default (port 0, a temporary data
# directory), signed in as the platform admin. Every documented operation gets generated requests,
# valid and invalid, and every answer is checked: no 5xx, the status code and content type documented,
# the body matching the documented schema. Bounded: API_FUZZ_EXAMPLES examples per operation and
# phase (default 50), deterministic generation, one worker, six minutes at most (a run past its time limit fails).
# The reports are in <target>/api-fuzz/ (JUnit XML per run, and the server's log).
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${API_FUZZ_EXAMPLES:-50}"
schemathesis_version=4.32.5
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
venv="$target/api-fuzz-venv"
out="$target/api-fuzz"

if ! "$venv/bin/st" --version 2>/dev/null | grep -q " $schemathesis_version\$"; then
  echo "installing schemathesis $schemathesis_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
# The binary as `cargo test` builds it (with the dev-dependencies' features): `cargo build --bin` would
# build it with other features, recompiling it and its web stack after every `cargo test` and back.
cargo test --locked --no-run --test it -q

data=$(mktemp -d /tmp/sonicgw-api-fuzz.XXXXXX)
server=""
cleanup() {
  [[ -z "$server" ]] || kill "$server" 2>/dev/null || true
  [[ -z "$server" ]] || wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
rm -rf "$out" && mkdir -p "$out"

# The admin's plan (`pro`, the bootstrapped tenant's) with request budgets no run reaches: the
# fuzzer is one user sending thousands of requests a minute, and rate-limited answers (429, which
# the document lists) would stand in for the operations' own.
cat >"$data/sonicgw.toml" <<'TOML'
[plans.pro]
max_resolution = 1024
max_duration_s = 300
max_inference_steps = 50
videos_per_day = 200
max_concurrent_jobs = 4
priority_weight = 4
allow_lip_sync_correction = true
requests_per_minute = 1000000
previews_per_minute = 1000000
TOML
password="api-fuzz-admin-password"
SONICGW_CONFIG="$data/sonicgw.toml" SONICGW_LISTEN=127.0.0.1:0 SONICGW_METRICS_LISTEN=127.0.0.1:0 \
  SONICGW_DATA_DIR="$data/data" SONICGW_ADMIN_PASSWORD="$password" SONICGW_LOG_FORMAT=json \
  SONICGW_LOGIN_IP_MAX_FAILURES=1000000 \
  "$target/debug/sonicgw" serve >"$out/server.out" 2>"$out/server.log" &
server=$!
base=""
for _ in $(seq 300); do
  base=$(grep -o 'listening on http://[0-9.:]*' "$out/server.out" | head -1 | cut -d' ' -f3) || true
  [[ -n "$base" ]] && break
  kill -0 "$server" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$base" ]] || { echo "sonicgw did not start" >&2; exit 1; }

token=$(curl -fsS -d grant_type=password -d username=admin --data-urlencode "password=$password" \
  "$base/v1/auth/token" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
# A remote worker's service account, for the worker protocol (user tokens are refused there).
credentials=$(SONICGW_CONFIG="$data/sonicgw.toml" SONICGW_DATA_DIR="$data/data" \
  "$target/debug/sonicgw" admin create-worker api-fuzz)
client_id=$(sed -n 's/^SONICGW_WORKER_CLIENT_ID=//p' <<<"$credentials")
client_secret=$(sed -n 's/^SONICGW_WORKER_CLIENT_SECRET=//p' <<<"$credentials" | cut -d' ' -f1)
worker_token=$(curl -fsS -d grant_type=client_credentials -d "client_id=$client_id" \
  --data-urlencode "client_secret=$client_secret" "$base/v1/auth/token" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

# The same generation settings for both runs. `Origin` is the server's own, as the web app's
# cookie routes require.
run() {
  local name=$1 bearer=$2 limit_s=$3
  shift 3
  echo "schemathesis ($name) against $base: $examples examples per operation" >&2
  PYTHONPATH=scripts SCHEMATHESIS_HOOKS=api_fuzz_hooks timeout "$limit_s" "$venv/bin/st" run "$base/openapi.json" \
    --header "Authorization: Bearer $bearer" --header "Origin: $base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$examples" --generation-deterministic --no-shrink \
    --workers 1 --request-timeout 30 --suppress-health-check all \
    --report junit --report-junit-path "$out/$name.xml" --no-color "$@"
}

status=0
# Every operation but the worker protocol's, as the platform admin. Left out, because they would end
# the run rather than test the API: signing out and revoking (`/v1/auth/logout`,
# `DELETE /v1/auth/session`, `/v1/auth/revoke`) could revoke the run's own token. The stateful phase
# is not run: it chains operations through their answers (it could disable or delete the admin it
# signs in as), and its length is not bounded by a number of examples.
run admin "$token" 240 --exclude-tag worker \
  --exclude-operation-id logout --exclude-operation-id revoke --exclude-operation-id sign_out || status=$?
# The worker protocol with a worker's token. `POST /v1/worker/lease` is left out: a long poll, each
# example would wait up to 30 s for a job that never comes.
run worker "$worker_token" 120 --include-tag worker --exclude-path /v1/worker/lease || status=$?

if grep -q '"level":"ERROR"' "$out/server.log"; then
  echo "the server logged errors during the run:" >&2
  grep '"level":"ERROR"' "$out/server.log" | head -20 >&2
  status=1
fi
exit "$status"
