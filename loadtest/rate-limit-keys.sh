#!/usr/bin/env bash
# One million distinct keys against one rate limit: the gateway's memory stays within the
# limit's table (`limits.rate_limit_keys` keys of 16 bytes each), the keys it cannot hold are
# evicted and counted, and every request is answered.
# A release gateway (two workers) on the example bundle with a limit keyed by `x-api-key` on
# /public; wrk (one Lua counter per connection) sends REQUESTS requests, each with a key never
# sent before. The gateway's RSS is read before and after, from /proc.
# Writes loadtest/reports/rate-limit-keys.md.
# Usage: loadtest/rate-limit-keys.sh [REQUESTS]   (default 1000000; about a minute; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
KEYS=65536
command -v wrk >/dev/null || { echo "wrk missing: loadtest/install.sh" >&2; exit 1; }
cargo build --release -p gateway -p test-support --bins >&2
. loadtest/lib.sh
start_upstream_and_bundle 2
sed -i -e "s|^routes:|rate_limits:\n  per_key: { key: header.x-api-key, rate: 100/s, burst: 100 }\nroutes:|" \
  -e "s|    policy: data.http.public.allow|    policy: data.http.public.allow\n    rate_limits: [per_key]|" "$work/bundle/gateway/data.yaml"
start_gateway "limits: { rate_limit_keys: $KEYS }\n"
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$gw/status"; }
# metric NAME LABEL...: the value of the series of NAME whose labels include each LABEL (k="v").
metric() {
  local name=$1; shift
  curl -s "http://127.0.0.1:$admin/metrics" | awk -v name="$name" -v want="$*" '
    index($0, name "{") == 1 { n = split(want, w, " "); ok = 1; for (i = 1; i <= n; i++) if (!index($1, w[i])) ok = 0; if (ok) { print $2; exit } }'
}
# Warm up with a few keys so the first reading is of a serving gateway.
for i in $(seq 200); do curl -s -o /dev/null -H "x-api-key: warm-$i" "http://127.0.0.1:$port/public/x"; done
before=$(rss)
cat > "$work/keys.lua" <<'LUA'
local counter = 0
local id = 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) prefix = "t" .. tid .. "-" end
function request()
  counter = counter + 1
  return wrk.format("GET", "/public/x", { ["x-api-key"] = prefix .. counter })
end
LUA
# wrk runs for a time, not a count: a duration long enough for N at the measured rate, cut at N
# by the gateway's request counter.
start=$(date +%s.%N)
timeout 300 wrk -t 2 -c 32 -d 600s -s "$work/keys.lua" "http://127.0.0.1:$port/public/x" > "$work/wrk.out" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")
while kill -0 "$wrk_pid" 2>/dev/null; do
  sent=$(metric gateway_requests_total 'route="public"' 'decision="allow"'); sent=${sent%.*}
  [ "${sent:-0}" -ge "$N" ] && break
  sleep 1
done
kill "$wrk_pid" 2>/dev/null || true
took=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
sleep 1
after=$(rss)
allowed=$(metric gateway_requests_total 'route="public"' 'decision="allow"')
limited=$(metric gateway_requests_total 'route="public"' 'decision="rate_limited"')
evicted=$(metric gateway_rate_limit_evictions_total 'limit="per_key"')
table=$((KEYS * 16 / 1024))
{
  echo "# One million distinct keys against one rate limit"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo "| commit | $(git rev-parse --short HEAD) |"
  echo "| command | \`loadtest/rate-limit-keys.sh $N\` |"
  echo
  echo "A release gateway (two workers) with one limit keyed by \`x-api-key\` (\`limits.rate_limit_keys: $KEYS\`:"
  echo "a table of $table KiB), sent requests each with a key never sent before by wrk over 32"
  echo "connections in ${took} s."
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| requests allowed | ${allowed%.*} |"
  echo "| requests refused (429) | ${limited%.*} |"
  echo "| keys evicted while holding state | ${evicted%.*} |"
  echo "| gateway RSS before | $((before / 1024)) MiB |"
  echo "| gateway RSS after | $((after / 1024)) MiB |"
  echo "| RSS growth | $(((after - before) / 1024)) MiB (the table itself: $table KiB, allocated when the bundle activated) |"
} > loadtest/reports/rate-limit-keys.md
cat loadtest/reports/rate-limit-keys.md
