#!/usr/bin/env bash
# Benchmark (issue 9): API throughput with 1 and 2 API replicas behind the same database, in one run.
# Two `sonicgw serve --no-migrate` replicas, A and B, run the whole time on one fresh PostgreSQL
# database, one Redis key prefix, one file storage directory and one shared keys_dir (so each verifies
# the other's tokens), with `workers = 0` (API only: submitted jobs stay queued). Alternating rounds
# load either A alone or A and B together with the same total concurrency:
#   GET /v1/me (bearer token):   1 replica: wrk -t2 -c64 against A; 2 replicas: wrk -t1 -c32 against
#                                each, at the same time, summed;
#   POST /v1/videos (multipart, the sample face and speech): 1 replica: 8 connections against A;
#                                2 replicas: 4 against each; one user (one token) per connection.
# Prints medians over the rounds of req/s, p50 and p99 (of all requests of a measurement, both wrk
# processes merged) and the non-2xx counts, and the 2-replica : 1-replica ratios. Fails on a non-2xx
# response, a socket error, or a WARN/ERROR line in either replica's log.
#   scripts/bench-replicas.sh [rounds, default 3] [seconds per measurement, default 10]
# Needs PostgreSQL on 127.0.0.1:5432 (trust, user postgres) and Redis on 127.0.0.1:6379.
# The binary: SONICGW_BIN, else ${CARGO_TARGET_DIR:-target}/release/sonicgw (built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
duration="${2:-10}"
me_connections=64
submit_connections=8
pg_host=127.0.0.1
pg_port=5432
redis_host=127.0.0.1
redis_port=6379

if [ -n "${SONICGW_BIN:-}" ]; then
  bin=$SONICGW_BIN
else
  bin="${CARGO_TARGET_DIR:-target}/release/sonicgw"
  [ -x "$bin" ] || cargo build --release --locked -q --bin sonicgw
fi
[ -x "$bin" ] || { echo "no sonicgw binary at $bin"; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
psql -h "$pg_host" -p "$pg_port" -U postgres -Atqc 'SELECT 1' >/dev/null ||
  { echo "PostgreSQL is not reachable on $pg_host:$pg_port"; exit 1; }
[ "$(redis-cli -h "$redis_host" -p "$redis_port" ping)" = PONG ] ||
  { echo "Redis is not reachable on $redis_host:$redis_port"; exit 1; }

run_id=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
db="sonicgw_bench_$run_id"
prefix="sonicgw-bench-$run_id"
data=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  psql -h "$pg_host" -p "$pg_port" -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -h "$redis_host" -p "$redis_port" --scan --pattern "$prefix:*" |
    xargs -r -n 500 redis-cli -h "$redis_host" -p "$redis_port" del >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
psql -h "$pg_host" -p "$pg_port" -U postgres -qc "CREATE DATABASE $db" >/dev/null

# One configuration for both replicas; only data_dir (scratch space) and the listeners differ. The
# shared keys_dir is the README's "share it between replicas" shape: either replica signs and verifies.
# The plan's quotas and request rate limits are beyond the load, so they are not what is measured
# (they still run: every request takes a token from its Redis buckets, every submission is counted).
mkdir -p "$data/shared/blobs" "$data/shared/keys" "$data/a" "$data/b"
cat >"$data/config.toml" <<TOML
database_url = "postgres://postgres@$pg_host:$pg_port/$db"
redis_url = "redis://$redis_host:$redis_port"
redis_prefix = "$prefix"
storage_url = "file://$data/shared/blobs"
keys_dir = "$data/shared/keys"
url_signing_secret = "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
issuer = "http://sonicgw-bench.invalid"
workers = 0

[plans.bench]
max_resolution = 1024
max_duration_s = 300
max_inference_steps = 50
videos_per_day = 1000000000
max_concurrent_jobs = 1000000000
priority_weight = 1
allow_lip_sync_correction = false
requests_per_minute = 1000000000
tenant_requests_per_minute = 1000000000
TOML
sonicgw() { "$bin" --config "$data/config.toml" "$@"; }
sonicgw migrate >"$data/migrate.log" 2>&1 || { cat "$data/migrate.log"; exit 1; }
# The signing key exists before either replica starts, so they do not race to create one.
sonicgw keys rotate >/dev/null

start_replica() { # name; sets $base to its URL
  local name=$1
  SONICGW_DATA_DIR="$data/$name" SONICGW_LISTEN=127.0.0.1:0 SONICGW_METRICS_LISTEN=127.0.0.1:0 \
    SONICGW_ADMIN_PASSWORD=bench-admin-password \
    "$bin" --config "$data/config.toml" serve --no-migrate >"$data/$name.stdout" 2>"$data/$name.log" &
  pids+=($!)
  local pid=$!
  base=""
  for _ in $(seq 1 600); do
    base=$(sed -n 's/^sonicgw listening on //p' "$data/$name.stdout")
    [ -n "$base" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$base" ] || { echo "replica $name did not start:"; cat "$data/$name.log"; exit 1; }
  curl -sf "$base/readyz" >/dev/null || { echo "replica $name is not ready:"; curl -s "$base/readyz"; exit 1; }
}
# A first: it bootstraps the empty database (tenant default, platform admin); B finds it done.
start_replica a
a=$base
start_replica b
b=$base

field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
login() { # base, username, password, [tenant]
  curl -sf -d grant_type=password -d "username=$2" -d "password=$3" ${4:+-d "tenant=$4"} \
    "$1/v1/auth/token" | field access_token
}
post_json() { # base, path, token, body; prints the new object's id
  curl -sf -H "Authorization: Bearer $3" -H 'content-type: application/json' -d "$4" "$1$2" | field id
}
admin=$(login "$a" admin bench-admin-password)
[ -n "$admin" ] || { echo "admin login failed"; exit 1; }
tenant=$(post_json "$a" /v1/tenants "$admin" '{"name":"bench","plan":"bench"}')
[ -n "$tenant" ] || { echo "creating the tenant failed"; exit 1; }
# User 0 for GET /v1/me; users 1..8 submit, one per wrk connection (a user may have only 2
# submissions probed at once per replica). Tokens come from either replica: the keys are shared.
password=bench-user-password
for i in $(seq 0 "$submit_connections"); do
  [ -n "$(post_json "$a" /v1/users "$admin" \
    "{\"username\":\"u$i\",\"password\":\"$password\",\"role\":\"user\",\"tenant_id\":\"$tenant\"}")" ] ||
    { echo "creating user u$i failed"; exit 1; }
done
me_token=$(login "$b" u0 "$password" bench)
: >"$data/tokens"
for i in $(seq 1 "$submit_connections"); do
  if [ $((i % 2)) = 1 ]; then issuer_base=$a; else issuer_base=$b; fi
  token=$(login "$issuer_base" "u$i" "$password" bench)
  [ -n "$token" ] || { echo "login of u$i failed"; exit 1; }
  echo "$token" >>"$data/tokens"
done
half=$((submit_connections / 2))
head -n "$half" "$data/tokens" >"$data/tokens-a"
tail -n +"$((half + 1))" "$data/tokens" >"$data/tokens-b"

image=assets/samples/face_astronaut.png
audio=assets/samples/speech_en.mp3
for base in "$a" "$b"; do
  curl -sf -H "Authorization: Bearer $me_token" "$base/v1/me" >/dev/null ||
    { echo "GET /v1/me on $base failed"; exit 1; }
  status=$(curl -s -o "$data/first" -w '%{http_code}' -H "Authorization: Bearer $me_token" \
    -F "image=@$image" -F "audio=@$audio" "$base/v1/videos")
  [ "$status" = 202 ] || { echo "POST /v1/videos on $base answered $status:"; cat "$data/first"; echo; exit 1; }
done

# wrk scripts. done() writes the summary and the latency quantiles at every 0.1 % (wrk's Lua API
# gives percentiles, not its histogram), each standing for 0.1 % of that process's requests, so the
# quantiles of two wrk processes merge into p50 and p99 of all their requests (to within 0.1 % rank).
cat >"$data/report.lua" <<'LUA'
local function report(summary, latency, statuses, first_error)
  local f = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local e = summary.errors
  f:write(string.format("summary %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.status, e.connect, e.read, e.write, e.timeout))
  if statuses then f:write("statuses " .. statuses .. "\n") end
  if first_error then f:write("first_error " .. first_error:gsub("\n", " ") .. "\n") end
  if summary.requests > 0 then
    for i = 1, 1000 do
      f:write(string.format("q %.6f %d\n", summary.requests / 1000, latency:percentile(i / 10)))
    end
  end
  f:close()
end
return report
LUA
cat >"$data/me.lua" <<'LUA'
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
function done(summary, latency, requests) report(summary, latency) end
LUA
cat >"$data/submit.lua" <<'LUA'
-- POST /v1/videos: one thread per connection, each with its own user's token.
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
local function slurp(path)
  local f = assert(io.open(path, "rb")); local s = f:read("*a"); f:close(); return s
end
local boundary = "sonicgw-bench-boundary-7d3f9a"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="image"; filename="face.png"\r\n'
  .. "Content-Type: image/png\r\n\r\n" .. slurp(os.getenv("BENCH_IMAGE")) .. "\r\n"
  .. "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="audio"; filename="speech.mp3"\r\n'
  .. "Content-Type: audio/mpeg\r\n\r\n" .. slurp(os.getenv("BENCH_AUDIO")) .. "\r\n"
  .. "--" .. boundary .. "--\r\n"

local tokens, threads = {}, {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("token", tokens[#threads])
end
function init(args)
  assert(token, "more wrk threads than tokens")
  wrk.headers["Authorization"] = "Bearer " .. token
  counts, counts_text, first_error = {}, "", nil
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status >= 300 and not first_error then first_error = status .. " " .. (body or "") end
  -- Tables cannot cross Lua states: done() reads each thread's counts as "status=n,..." text.
  local parts = {}
  for s, n in pairs(counts) do parts[#parts + 1] = s .. "=" .. n end
  counts_text = table.concat(parts, ",")
end
function done(summary, latency, requests)
  local total, first = {}, nil
  for _, thread in ipairs(threads) do
    for status, n in string.gmatch(thread:get("counts_text") or "", "(%d+)=(%d+)") do
      total[status] = (total[status] or 0) + tonumber(n)
    end
    first = first or thread:get("first_error")
  end
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = status .. "=" .. n end
  table.sort(parts)
  report(summary, latency, table.concat(parts, ","), first)
end
LUA

job_count() { psql -h "$pg_host" -p "$pg_port" -U postgres -d "$db" -Atqc 'SELECT count(*) FROM jobs'; }
export BENCH_LUA_DIR="$data" BENCH_IMAGE="$PWD/$image" BENCH_AUDIO="$PWD/$audio"
wrk_me() { # out, base, threads, connections, seconds
  BENCH_OUT=$1 wrk -t"$3" -c"$4" -d"$5s" -s "$data/me.lua" \
    -H "Authorization: Bearer $me_token" "$2/v1/me" >"$1.txt"
}
wrk_submit() { # out, base, connections, tokens file, seconds
  BENCH_OUT=$1 BENCH_TOKENS=$4 wrk -t"$3" -c"$3" -d"$5s" --timeout 30s -s "$data/submit.lua" \
    "$2/v1/videos" >"$1.txt"
}
# One measurement: operation (me|submit), replicas (1|2), seconds; appends a result line
# "req/s p50_ms p99_ms non2xx socket_errors statuses" to $data/result-<op>-<replicas>.
measure() {
  local op=$1 n=$2 seconds=$3 out="$data/run-$1-$2"
  rm -f "$out".*
  if [ "$op" = me ]; then
    if [ "$n" = 1 ]; then
      wrk_me "$out.a" "$a" 2 "$me_connections" "$seconds"
    else
      wrk_me "$out.a" "$a" 1 $((me_connections / 2)) "$seconds" &
      local w=$!
      wrk_me "$out.b" "$b" 1 $((me_connections / 2)) "$seconds"
      wait "$w"
    fi
  else
    if [ "$n" = 1 ]; then
      wrk_submit "$out.a" "$a" "$submit_connections" "$data/tokens" "$seconds"
    else
      wrk_submit "$out.a" "$a" "$half" "$data/tokens-a" "$seconds" &
      local w=$!
      wrk_submit "$out.b" "$b" "$half" "$data/tokens-b" "$seconds"
      wait "$w"
    fi
  fi
  local files=("$out".a)
  [ "$n" = 2 ] && files+=("$out".b)
  for f in "${files[@]}"; do
    grep -q '^summary ' "$f" || { echo "wrk wrote no report for $op x$n:"; cat "$f.txt"; exit 1; }
    if grep -q '^first_error ' "$f"; then echo "$op x$n: $(sed -n 's/^first_error //p' "$f" | cut -c1-300)"; fi
  done
  # Throughput (2xx responses only) summed over the wrk processes; p50 and p99 from their merged quantiles.
  local counts percentiles
  counts=$(awk '
    $1 == "summary" { rps += ($2 - $4) / ($3 / 1e6); non2xx += $4; sock += $5 + $6 + $7 + $8 }
    $1 == "statuses" { k = split($2, kv, ","); for (i = 1; i <= k; i++) { split(kv[i], p, "="); st[p[1]] += p[2] } }
    END {
      s = ""; for (k in st) s = s (s == "" ? "" : ",") k "=" st[k]
      printf "%.1f %d %d %s\n", rps, non2xx, sock, (s == "" ? "-" : s)
    }' "${files[@]}")
  percentiles=$(awk '$1 == "q" { print $3, $2 }' "${files[@]}" | sort -n |
    awk '{ v[NR] = $1; c[NR] = $2; total += $2 }
      END {
        for (i = 1; i <= NR; i++) {
          seen += c[i]
          if (p50 == "" && seen >= 0.50 * total * (1 - 1e-9)) p50 = v[i] / 1000
          if (p99 == "" && seen >= 0.99 * total * (1 - 1e-9)) p99 = v[i] / 1000
        }
        printf "%.3f %.3f\n", p50, p99
      }')
  local rps non2xx sock st
  read -r rps non2xx sock st <<<"$counts"
  echo "$rps $percentiles $non2xx $sock $st" >>"$data/result-$op-$n"
  # Submissions wrk left in flight when it stopped are still being probed and stored by the replicas:
  # let them finish before the next measurement, so it does not pay for them. Done when the number
  # of jobs has not changed for one p99 of this measurement (at least 1 s; at most 60 s in all).
  if [ "$op" = submit ]; then
    local window last now since=0 waited=0
    window=$(awk -v p="${percentiles#* }" 'BEGIN {w = int(p / 500 + 1); print (w < 2 ? 2 : w)}')
    last=$(job_count)
    while [ "$since" -lt "$window" ] && [ "$waited" -lt 120 ]; do
      sleep 0.5
      now=$(job_count)
      if [ "$now" = "$last" ]; then since=$((since + 1)); else since=0; last=$now; fi
      waited=$((waited + 1))
    done
  fi
}

# Warm-up of both replicas and both operations, then alternating rounds (the order of the two
# set-ups flips every round) so that drift on the shared machine hits both alike.
measure me 2 2 && measure submit 2 2
rm -f "$data"/result-*
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="1 2"; else order="2 1"; fi
  for n in $order; do measure me "$n" "$duration"; done
  for n in $order; do measure submit "$n" "$duration"; done
  echo "round $round of $rounds done" >&2
done

median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
col() { cut -d' ' -f"$2" "$data/result-$1" | median; }
sum() { cut -d' ' -f"$2" "$data/result-$1" | awk '{s += $1} END {print s + 0}'; }
statuses() { cut -d' ' -f6 "$data/result-$1" | tr ',' '\n' | grep -v '^-$' |
  awk -F= '{n[$1] += $2} END {s = ""; for (k in n) s = s (s == "" ? "" : " ") k "x" n[k]; print (s == "" ? "-" : s)}'; }

jobs=$(job_count)
blob_bytes=$(du -sb "$data/shared/blobs" | cut -f1)
echo
echo "$("$bin" --version) ($bin); $rounds alternating rounds x ${duration}s per measurement; medians over rounds"
echo "GET /v1/me: 1 replica wrk -t2 -c$me_connections; 2 replicas wrk -t1 -c$((me_connections / 2)) each."
echo "POST /v1/videos: 1 replica $submit_connections connections; 2 replicas $half each; one user per connection."
echo
echo "| operation | replicas | 2xx req/s | p50 ms | p99 ms | non-2xx (all rounds) | statuses (all rounds) |"
echo "|---|---|---|---|---|---|---|"
failed=0
for op in me submit; do
  if [ "$op" = me ]; then label="\`GET /v1/me\`"; else label="\`POST /v1/videos\`"; fi
  for n in 1 2; do
    echo "| $label | $n | $(col "$op-$n" 1) | $(col "$op-$n" 2) | $(col "$op-$n" 3) | $(sum "$op-$n" 4) | $(statuses "$op-$n") |"
    [ "$(sum "$op-$n" 4)" = 0 ] && [ "$(sum "$op-$n" 5)" = 0 ] || failed=1
  done
done
echo
for op in me submit; do
  printf '%s: 2 replicas / 1 replica = %s\n' "$op" \
    "$(awk -v x="$(col "$op-2" 1)" -v y="$(col "$op-1" 1)" 'BEGIN {printf "%.2f", x / y}')"
done
accepted=$(cat "$data"/result-submit-* | cut -d' ' -f6 | tr ',' '\n' | awk -F= '$1 ~ /^2/ {s += $2} END {print s + 0}')
echo "jobs queued in the database: $jobs (wrk counted $accepted accepted in the measured rounds; the rest are" \
  "the warm-up and submissions in flight when wrk stopped); files stored: $((blob_bytes / 1048576)) MiB"
# The access logs: what each replica answered, by status, over the whole run (set-up included).
for name in a b; do
  echo "replica $name answered: $(grep -o ' status=[0-9]*' "$data/$name.log" | sort | uniq -c |
    awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), substr($2, 8), $1}')"
  if grep -q ' status=5[0-9][0-9]' "$data/$name.log"; then echo "replica $name answered 5xx"; failed=1; fi
done
# One warning is expected at start: the first replica generates the self-signed C2PA chain into the
# shared keys_dir (no c2pa_cert/c2pa_key configured). Anything else fails the run.
expected='WARN .*generated a self-signed C2PA signing certificate'
for name in a b; do
  if grep -E '\b(ERROR|WARN)\b' "$data/$name.log" | grep -Ev "$expected" >/dev/null; then
    echo "replica $name logged errors:"; grep -E '\b(ERROR|WARN)\b' "$data/$name.log" | grep -Ev "$expected" | head
    failed=1
  fi
done
for f in "$data"/result-*; do
  awk '{s += $5} END {exit s > 0}' "$f" || { echo "socket errors in ${f##*/}: $(cut -d' ' -f5 "$f" | tr '\n' ' ')"; }
done
[ "$jobs" -ge "$accepted" ] || { echo "fewer jobs in the database than accepted submissions"; failed=1; }
[ "$failed" = 0 ] || { echo "FAILED: see above"; exit 1; }
