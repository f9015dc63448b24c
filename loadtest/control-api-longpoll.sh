#!/usr/bin/env bash
# control-api under load, on loopback only, bounded in count and time:
#  1. idle long-poll waiters: for each count in $WAITERS (default "5000 10000"), hold that many
#     `GET` + `If-None-Match` + `Prefer: wait=60` requests on one control-api, measure its RSS,
#     publish, and measure how long until every waiter is answered 200
#     (control-api/examples/longpoll_load.rs);
#  2. 304 throughput: wrk (or oha, if installed) with a matching If-None-Match for $DURATION
#     (default 10s) at 64 connections.
# Usage: loadtest/control-api-longpoll.sh        (builds in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
WAITERS=${WAITERS:-"5000 10000"}
DURATION=${DURATION:-10s}
read_token=loadtest-read-token
publish_token=loadtest-publish-token

cargo build --release -p control-api --bins --examples >&2
bin=target/release/control-api
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/control-api.yaml" <<YAML
listen: 127.0.0.1:0
store: sqlite://./control.db
max_long_poll: 120s
tokens:
  - name: loadtest-publisher
    scope: publish
    sha256: $($bin hash-token "$publish_token")
  - name: loadtest-reader
    scope: read
    sha256: $($bin hash-token "$read_token")
YAML

# Each waiter is a socket on both ends: raise the descriptor limit as far as allowed.
ulimit -n "$(ulimit -Hn)" || true
echo "open files limit: $(ulimit -n)"
CONTROL_API_LOG=warn "$bin" --config "$work/control-api.yaml" > "$work/out" &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
[ -n "$addr" ] || { echo "control-api did not start" >&2; exit 1; }
echo "control-api $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $addr, pid $pid, $(nproc) CPUs"

for n in $WAITERS; do
  echo "== $n idle long polls"
  timeout 600 target/release/examples/longpoll_load --addr "$addr" --pid "$pid" \
    --read-token "$read_token" --publish-token "$publish_token" --waiters "$n" --wait 60
done

echo "== 304s: GET with a matching If-None-Match, 64 connections, $DURATION"
etag=$(curl -s -D - -o /dev/null -H "authorization: Bearer $read_token" "http://$addr/v1/bundles/loadtest" \
  | tr -d '\r' | sed -n 's/^etag: //Ip')
if command -v oha >/dev/null; then
  oha --no-tui -z "$DURATION" -c 64 -H "authorization: Bearer $read_token" -H "if-none-match: $etag" \
    "http://$addr/v1/bundles/loadtest"
else
  wrk -t 2 -c 64 -d "$DURATION" --latency -H "authorization: Bearer $read_token" -H "if-none-match: $etag" \
    "http://$addr/v1/bundles/loadtest"
fi
echo "== 200s: GET without If-None-Match (the example bundle, $(curl -s -o /dev/null -w '%{size_download}' -H "authorization: Bearer $read_token" "http://$addr/v1/bundles/loadtest") bytes), 64 connections, $DURATION"
if command -v oha >/dev/null; then
  oha --no-tui -z "$DURATION" -c 64 -H "authorization: Bearer $read_token" "http://$addr/v1/bundles/loadtest"
else
  wrk -t 2 -c 64 -d "$DURATION" --latency -H "authorization: Bearer $read_token" "http://$addr/v1/bundles/loadtest"
fi
curl -s "http://$addr/metrics" | grep -E '^control_api_(bundle_downloads|publishes|long_poll)'
