#!/usr/bin/env bash
# Benchmark: authenticated GET /v1/me against unauthenticated GET /healthz on the same release-build
# server in the same run (wrk, 64 connections). Prints both throughputs, p99 latencies and the ratio.
#   scripts/bench-auth.sh [rounds, default 5] [seconds per round and endpoint, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
duration="${2:-5}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked -q

data=$(mktemp -d)
log="$data/server.log"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
SONICGW_DATA_DIR="$data" SONICGW_LISTEN=127.0.0.1:0 SONICGW_METRICS_LISTEN= \
  SONICGW_ADMIN_PASSWORD=bench-admin-password SONICGW_LOG=warn \
  target/release/sonicgw serve >"$data/stdout" 2>"$log" &
pid=$!
for _ in $(seq 1 100); do grep -q listening "$data/stdout" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^sonicgw listening on //p' "$data/stdout")
[ -n "$base" ] || { cat "$log"; exit 1; }

token=$(curl -sf -d grant_type=password -d username=admin -d password=bench-admin-password \
  "$base/v1/auth/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || { echo "login failed"; exit 1; }
curl -sf -H "Authorization: Bearer $token" "$base/v1/me" >/dev/null

rps() { awk '/^Requests\/sec/ {print $2}'; }
p99() { awk '$1=="99%" {print $2}' | awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Warm-up, then alternating rounds so that drift on a shared 2-core machine hits both endpoints alike.
wrk -t2 -c64 -d2s "$base/healthz" >/dev/null
wrk -t2 -c64 -d2s -H "Authorization: Bearer $token" "$base/v1/me" >/dev/null
: >"$data/h"; : >"$data/m"
for round in $(seq 1 "$rounds"); do
  out=$(wrk -t2 -c64 -d"${duration}s" --latency "$base/healthz")
  echo "$(echo "$out" | rps) $(echo "$out" | p99)" >>"$data/h"
  out=$(wrk -t2 -c64 -d"${duration}s" --latency -H "Authorization: Bearer $token" "$base/v1/me")
  if echo "$out" | grep -q Non-2xx; then echo "GET /v1/me returned non-2xx responses"; echo "$out"; exit 1; fi
  echo "$(echo "$out" | rps) $(echo "$out" | p99)" >>"$data/m"
done

h_rps=$(cut -d' ' -f1 "$data/h" | median); m_rps=$(cut -d' ' -f1 "$data/m" | median)
h_p99=$(cut -d' ' -f2 "$data/h" | median); m_p99=$(cut -d' ' -f2 "$data/m" | median)
ratio=$(awk -v a="$m_rps" -v b="$h_rps" 'BEGIN {printf "%.3f", a/b}')

echo "rounds: $rounds x ${duration}s per endpoint, wrk -t2 -c64 (medians)"
printf '%-14s %12s %10s\n' endpoint "req/s" "p99 ms"
printf '%-14s %12s %10s\n' "GET /healthz" "$h_rps" "$h_p99"
printf '%-14s %12s %10s\n' "GET /v1/me" "$m_rps" "$m_p99"
printf 'ratio /v1/me : /healthz throughput = %s (target >= 0.80); /v1/me p99 %s ms (target < 5)\n' "$ratio" "$m_p99"
