#!/usr/bin/env bash
# Load test: USERS concurrent clients (default 200) for SECONDS (default 60) against one `sonicgw serve` on
# the embedded default (SQLite, files in a fresh temporary data directory, port 0), each client with its
# own account doing a mix of sign-ins, refresh-token rotations, GET /v1/me, listings, and video submissions
# on the simulated engine followed to their end and downloaded (bearer and signed link); the clients and
# their weights are in scripts/load_test.py. The load generator is locust (PyPI, pinned, headless, in a
# venv under the cargo target directory, installed only when missing).
#
# Prints a markdown table per operation (requests, failures, p50, p99, max, req/s), the server's RSS
# (VmRSS, VmHWM) before and after, and fails (exit 1) on any failed request (any 5xx, any 429 or other
# unexpected status, a job that did not succeed) or any ERROR or WARN line the server logged (but two
# expected at start, see below). Locust's CSV files and log, and the server's log, stay in <target>/load/.
#
#   scripts/load.sh [users, default 200] [seconds, default 60]
#   SONICGW_BIN=path/to/sonicgw scripts/load.sh     # default <target>/release/sonicgw, built when missing
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-200}"
duration="${2:-60}"
# Users start at this many per second (the first sign-ins are Argon2 verifications, two at a time on a
# 2-core server): 10 s of ramp-up at the default, inside the measured duration.
spawn_rate="${LOAD_SPAWN_RATE:-$(((users + 9) / 10))}"
target="${CARGO_TARGET_DIR:-target}"

# The version is pinned so that every machine runs the same load generator.
locust_version=2.47.0
venv="$target/load-venv"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('locust') != '$locust_version')" 2>/dev/null; then
  echo "installing locust $locust_version (the load generator) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "locust==$locust_version"
fi

if [ -n "${SONICGW_BIN:-}" ]; then
  bin="$SONICGW_BIN"
  [ -x "$bin" ] || { echo "SONICGW_BIN=$bin is not an executable" >&2; exit 2; }
else
  bin="$target/release/sonicgw"
  [ -x "$bin" ] || cargo build --release --locked --bin sonicgw
fi

data=$(mktemp -d)
# Kept after the run: locust's CSV statistics and log, and the server's log.
out="$target/load"
rm -rf "$out"
mkdir -p "$out"
log="$data/server.log"
server=""
trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi; rm -rf "$data"' EXIT
trap 'exit 130' INT TERM

# The default configuration but for what the test must not measure. Each client has its own account, so the
# per-account limits (login_max_failures 10, two submissions probed at once per user, 8 event streams per
# user) stay at their defaults and are never reached. Lifted:
# - login_ip_max_failures (default 100): every client signs in from 127.0.0.1, and the throttle counts a
#   login in flight against the network's allowance until its password is checked, so 200 clients signing
#   in at once would wait for slots, then be refused with 429 (too_many_attempts).
# - plan `load` (the clients' tenant) and `pro` (the admin who creates them): request rate limits, daily
#   video quota, concurrent jobs and previews far above what the clients can use.
# - workers: the simulated engine only sleeps (simulated_engine_ms per job), so 64 in-process workers run
#   every submitted job at once and a job's time is the engine's 2 s plus the queue's overhead.
cat >"$data/config.toml" <<'TOML'
workers = 64
simulated_engine_ms = 2000
login_ip_max_failures = 100000

[plans.load]
max_resolution = 1024
max_duration_s = 300
max_inference_steps = 50
videos_per_day = 1000000
max_concurrent_jobs = 1000
priority_weight = 1
allow_lip_sync_correction = true
requests_per_minute = 1000000000
tenant_requests_per_minute = 1000000000
previews_per_minute = 1000000

[plans.pro]
max_resolution = 1024
max_duration_s = 300
max_inference_steps = 50
videos_per_day = 200
max_concurrent_jobs = 4
priority_weight = 4
allow_lip_sync_correction = true
requests_per_minute = 1000000000
TOML
admin_password="load-admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
SONICGW_DATA_DIR="$data/server" SONICGW_LISTEN=127.0.0.1:0 SONICGW_METRICS_LISTEN=127.0.0.1:0 \
  SONICGW_ADMIN_PASSWORD="$admin_password" \
  "$bin" --config "$data/config.toml" serve >"$data/stdout" 2>"$log" &
server=$!
for _ in $(seq 1 300); do
  grep -q '^sonicgw listening on ' "$data/stdout" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "the server exited:"; cat "$log"; exit 1; }
  sleep 0.1
done
base=$(sed -n 's/^sonicgw listening on //p' "$data/stdout")
[ -n "$base" ] || { echo "the server did not start within 30 s:"; cat "$log"; exit 1; }

rss() { # VmRSS and VmHWM of the server, in MB
  awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {printf "VmRSS %.1f MB, VmHWM %.1f MB", r/1024, h/1024}' \
    "/proc/$server/status"
}

"$venv/bin/python" scripts/load_test.py setup "$base" "$admin_password" "$users" "$data/accounts.json"
rss_before=$(rss)
echo "server $base ($bin); before the load: $rss_before"
# The machine is shared: its load average says whether the numbers are the server's or the neighbours'.
echo "locust $locust_version: $users users (spawned at $spawn_rate/s), ${duration}s; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Locust's own exit status is 1 on any failure: the report below decides, with the details.
LOAD_ACCOUNTS="$data/accounts.json" LOAD_SUMMARY="$data/summary.json" \
  LOAD_IMAGE=assets/samples/face_astronaut.png LOAD_AUDIO=assets/samples/speech_en.mp3 \
  "$venv/bin/locust" -f scripts/load_test.py --headless --only-summary \
  -u "$users" -r "$spawn_rate" -t "${duration}s" --stop-timeout 30 --host "$base" \
  --csv "$out/locust" --logfile "$out/locust.log" --loglevel WARNING >"$data/locust.out" 2>&1 || true
if [ ! -f "$data/summary.json" ]; then
  echo "locust did not finish:"; tail -n 40 "$data/locust.out" "$out/locust.log"; exit 1
fi
kill -0 "$server" 2>/dev/null || { echo "the server died under load:"; tail -n 40 "$log"; exit 1; }
rss_after=$(rss)

status=0
echo
"$venv/bin/python" scripts/load_test.py report "$data/summary.json" || status=1
echo
echo "server RSS before: $rss_before"
echo "server RSS after:  $rss_after"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
echo "server log: $(wc -l <"$log") lines; locust's CSV files and log and the server's log are in $out/"
cp "$log" "$out/server.log"
# Expected, once, at start: the warning that the simulated engine is on (it is what the test runs), and on a
# fresh data directory the one that a self-signed C2PA certificate was generated (README, Labels). Any other
# ERROR or WARN line fails the run.
expected='the simulated engine is enabled|generated a self-signed C2PA signing certificate'
if grep -E '\b(ERROR|WARN)\b' "$log" | grep -vE "$expected" >"$data/problems"; then
  echo "the server logged $(wc -l <"$data/problems") unexpected ERROR/WARN lines, the first 20:"
  head -n 20 "$data/problems"
  status=1
else
  echo "server log: no ERROR or WARN line but the expected ones at start:"
  grep -E '\b(ERROR|WARN)\b' "$log" | sed 's/^/  /' || true
fi
if grep -qiE 'traceback|error' "$out/locust.log"; then
  echo "locust's own log has errors:"; grep -iE -A3 'traceback|error' "$out/locust.log" | head -n 40
  status=1
fi
exit "$status"
