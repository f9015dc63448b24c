#!/usr/bin/env bash
# control-api under load, on loopback only, bounded in count and time:
#  1. idle long-poll waiters: for each count in $WAITERS (default "5000 10000"), on a freshly
#     started control-api, hold that many `GET` + `If-None-Match` + `Prefer: wait=60` requests,
#     measure its RSS, publish, and measure how long until every waiter is answered 200
#     (control-api/examples/longpoll_load.rs; it fails unless all are woken with the new bundle);
#  2. 304 and 200 throughput: wrk (or oha, if installed) for $DURATION (default 10s) at 64
#     connections, with and without a matching If-None-Match.
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
pid=
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
trap 'stop; rm -rf "$work"' EXIT
cat > "$work/control-api.yaml" <<YAML
listen: 127.0.0.1:0
store: sqlite://./control.db
max_long_poll: 120s
tokens:
  - name: loadtest-publisher
    scope: publish
    sha256: $(printf %s "$publish_token" | $bin hash-token)
  - name: loadtest-reader
    scope: read
    sha256: $(printf %s "$read_token" | $bin hash-token)
YAML

# Starts a control-api on a fresh store; sets $pid and $addr.
start() {
  rm -f "$work"/control.db* "$work/out"
  CONTROL_API_LOG=warn "$bin" --config "$work/control-api.yaml" > "$work/out" &
  pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' "$work/out")
  [ -n "$addr" ] || { echo "control-api did not start" >&2; exit 1; }
}

# Each waiter is a socket on both ends: raise the descriptor limit as far as allowed.
ulimit -n "$(ulimit -Hn)" || true
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, open files limit $(ulimit -n)"

for n in $WAITERS; do
  start
  echo "== $n idle long polls (fresh control-api on $addr, pid $pid)"
  timeout 600 target/release/examples/longpoll_load --addr "$addr" --pid "$pid" \
    --read-token "$read_token" --publish-token "$publish_token" --waiters "$n" --wait 60
  stop
done

start
timeout 600 target/release/examples/longpoll_load --addr "$addr" --pid "$pid" \
  --read-token "$read_token" --publish-token "$publish_token" --waiters 1 --wait 1 > /dev/null
url="http://$addr/v1/bundles/loadtest"
etag=$(curl -s -D - -o /dev/null -H "authorization: Bearer $read_token" "$url" | tr -d '\r' | sed -n 's/^etag: //Ip')
size=$(curl -s -o /dev/null -w '%{size_download}' -H "authorization: Bearer $read_token" "$url")
load() {
  if command -v oha >/dev/null; then
    oha --no-tui -z "$DURATION" -c 64 -H "authorization: Bearer $read_token" "$@" "$url"
  else
    wrk -t 2 -c 64 -d "$DURATION" --latency -H "authorization: Bearer $read_token" "$@" "$url"
  fi
}
echo "== 304s: GET with a matching If-None-Match, 64 connections, $DURATION"
load -H "if-none-match: $etag"
echo "== 200s: GET of the $size-byte example bundle, 64 connections, $DURATION"
load
curl -s "http://$addr/metrics" | grep -E '^control_api_(bundle_downloads|long_poll)'
