#!/usr/bin/env bash
# Benchmark, release build, wrk -t2 -c64, in one run with alternating rounds:
#   GET /healthz of a bare axum server (examples/bare_axum.rs), the baseline;
#   GET /healthz of sonicgw in its default configuration (access log at info, metrics listener on);
#   GET /v1/me of the same sonicgw with a bearer token (verification, revocation check, account read).
# Prints throughputs, p99 latencies and the ratios; fails on any non-2xx or on an error in the log.
#   scripts/bench-auth.sh [rounds, default 5] [seconds per round and endpoint, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
duration="${2:-5}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked -q --bin sonicgw --example bare_axum
bin_dir="${CARGO_TARGET_DIR:-target}/release"

data=$(mktemp -d)
log="$data/server.log"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$data"' EXIT
# The default configuration, but for the data directory, port 0, the first admin's password, and the
# admin's plan (pro) with a request rate limit one client at full speed cannot reach: this measures
# throughput, not the limit (which still runs: every request takes a token from its buckets).
cat >"$data/config.toml" <<'TOML'
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
SONICGW_DATA_DIR="$data" SONICGW_LISTEN=127.0.0.1:0 SONICGW_METRICS_LISTEN=127.0.0.1:0 \
  SONICGW_ADMIN_PASSWORD=bench-admin-password \
  "$bin_dir"/sonicgw --config "$data/config.toml" serve >"$data/stdout" 2>"$log" &
pids+=($!)
"$bin_dir"/examples/bare_axum >"$data/bare" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q listening "$data/stdout" 2>/dev/null && grep -q listening "$data/bare" 2>/dev/null && break
  sleep 0.1
done
base=$(sed -n 's/^sonicgw listening on //p' "$data/stdout")
bare=$(sed -n 's/^listening on //p' "$data/bare")
[ -n "$base" ] && [ -n "$bare" ] || { cat "$log" "$data/bare"; exit 1; }

token=$(curl -sf -d grant_type=password -d username=admin -d password=bench-admin-password \
  "$base/v1/auth/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || { echo "login failed"; exit 1; }
curl -sf -H "Authorization: Bearer $token" "$base/v1/me" >/dev/null

rps() { awk '/^Requests\/sec/ {print $2}'; }
p99() { awk '$1=="99%" {print $2}' | awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # name, then wrk arguments
  local name=$1; shift
  local out
  out=$(wrk -t2 -c64 -d"${duration}s" --latency "$@")
  if echo "$out" | grep -q Non-2xx; then echo "$name returned non-2xx responses"; echo "$out"; exit 1; fi
  echo "$(echo "$out" | rps) $(echo "$out" | p99)" >>"$data/$name"
}

# Warm-up, then alternating rounds so that drift on a shared 2-core machine hits all alike.
wrk -t2 -c64 -d2s "$bare/healthz" >/dev/null
wrk -t2 -c64 -d2s "$base/healthz" >/dev/null
wrk -t2 -c64 -d2s -H "Authorization: Bearer $token" "$base/v1/me" >/dev/null
: >"$data/b"; : >"$data/h"; : >"$data/m"
for round in $(seq 1 "$rounds"); do
  measure b "$bare/healthz"
  measure h "$base/healthz"
  measure m -H "Authorization: Bearer $token" "$base/v1/me"
done
# The one expected warning: the self-signed C2PA chain generated on a fresh data directory.
if grep -E '\b(ERROR|WARN)\b' "$log" | grep -v 'self-signed C2PA signing certificate' >/dev/null; then
  echo "the server logged errors:"; grep -E '\b(ERROR|WARN)\b' "$log" | head; exit 1
fi
lines=$(grep -c '"request"\| request ' "$log" || true)

b_rps=$(cut -d' ' -f1 "$data/b" | median); h_rps=$(cut -d' ' -f1 "$data/h" | median); m_rps=$(cut -d' ' -f1 "$data/m" | median)
b_p99=$(cut -d' ' -f2 "$data/b" | median); h_p99=$(cut -d' ' -f2 "$data/h" | median); m_p99=$(cut -d' ' -f2 "$data/m" | median)
hb=$(awk -v a="$h_rps" -v b="$b_rps" 'BEGIN {printf "%.3f", a/b}')
mh=$(awk -v a="$m_rps" -v b="$h_rps" 'BEGIN {printf "%.3f", a/b}')

echo "rounds: $rounds x ${duration}s per endpoint, wrk -t2 -c64 (medians); access log lines written: $lines"
printf '%-26s %12s %10s\n' endpoint "req/s" "p99 ms"
printf '%-26s %12s %10s\n' "bare axum GET /healthz" "$b_rps" "$b_p99"
printf '%-26s %12s %10s\n' "sonicgw GET /healthz" "$h_rps" "$h_p99"
printf '%-26s %12s %10s\n' "sonicgw GET /v1/me" "$m_rps" "$m_p99"
printf 'sonicgw /healthz : bare axum = %s (target >= 0.70)\n' "$hb"
printf 'sonicgw /v1/me : /healthz   = %s (target >= 0.80); /v1/me p99 %s ms (target < 5)\n' "$mh" "$m_p99"
