#!/usr/bin/env bash
# The training run of a profile-guided build (scripts/build-release --pgo runs it): the
# instrumented gateway and bare Pingora proxy (in BIN_DIR) serve the traffic the load tests
# measure, on loopback, bounded in requests, then stop cleanly so that each writes its profile.
# The mix: GET /orders/7 with a reader token (the decision cache, the orders rule), /public/x,
# a token whose signature does not verify (401), an unknown path, every decision logged and
# shipped, and the same GETs through bare Pingora.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${PGO_REQUESTS:-20000}
. loadtest/lib.sh
start_upstream_and_bundle 2
token=$("$bin/demo-token" --sub alice --role reader)
start_gateway "decision_logs: { sinks: [\"http://$up/v1/logs\"], sample: 1.0 }\n"
bp=$(free_port)
"$bin/examples/bare_proxy" "127.0.0.1:$bp" "$up" 2 > "$work/bare.log" 2>&1 &
bare=$!
pids+=("$bare")
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$bp/x" && break; sleep 0.1; done
bad="${token:0:${#token}-10}$([ "${token: -10:1}" = A ] && echo B || echo A)${token: -9}"
load() { oha --no-tui -n "$1" -c 32 "${@:3}" "$2" > /dev/null; }
load "$N" "http://127.0.0.1:$port/orders/7" -H "authorization: Bearer $token"
load $((N / 2)) "http://127.0.0.1:$port/public/x" -H "authorization: Bearer $token"
load $((N / 10)) "http://127.0.0.1:$port/orders/7" -H "authorization: Bearer $bad"
load $((N / 10)) "http://127.0.0.1:$port/nowhere"
load "$N" "http://127.0.0.1:$bp/orders/7" -H "authorization: Bearer $token"
sleep 1.5   # the decision-log shipper's last batch
# SIGINT: Pingora's fast shutdown returns from main, and the profile is written at exit.
kill -INT "$gw" "$bare"
wait "$gw" "$bare" 2>/dev/null || true
echo "trained: $N requests on /orders/7 and the rest of the mix" >&2
