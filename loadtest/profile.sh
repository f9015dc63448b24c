#!/usr/bin/env bash
# Profiles the gateway's hot path under load: an echo upstream and the gateway (example bundle,
# `threads: 2`) on loopback, oha sending authenticated orders GETs, and `perf record` sampling
# the gateway (software clock `cpu-clock`: this machine has no hardware counters; DWARF unwinding,
# since release builds keep no frame pointers). Writes
#   loadtest/reports/profile.txt        top functions, self and inclusive
#   loadtest/reports/gateway-flame.svg  flamegraph (if inferno is installed: install.sh --flamegraph)
# Usage: loadtest/profile.sh [SECONDS]      (default 8; bounded; cleans up after itself)
#        PROFILE_TARGET=bare loadtest/profile.sh   the same for the bare Pingora proxy
#        (gateway/examples/bare_proxy.rs, 2 threads): reports/profile-bare.txt, bare-pingora-flame.svg
set -euo pipefail
# (report pipelines below end in `head`: their SIGPIPE is not an error)
cd "$(dirname "$0")/.."
SECS=${1:-8}
export PATH="$HOME/.cargo/bin:$PATH"
command -v perf >/dev/null || { echo "perf missing: loadtest/install.sh" >&2; exit 1; }
command -v oha >/dev/null || { echo "oha missing: loadtest/install.sh" >&2; exit 1; }
TARGET=${PROFILE_TARGET:-gateway}
case $TARGET in gateway | bare) ;; *) echo "PROFILE_TARGET is gateway or bare (got $TARGET)" >&2; exit 2 ;; esac
cargo build --release -p gateway -p test-support -p loadtest-tools >&2
[ "$TARGET" = bare ] && cargo build --release -p gateway --example bare_proxy >&2
. loadtest/lib.sh   # bin, work, pids; all stopped and removed on exit
start_upstream_and_bundle 2
port=$(free_port)
admin=$(free_port)
cat > "$work/gateway.yaml" <<YAML
listen: 127.0.0.1:$port
admin: 127.0.0.1:$admin
threads: 2
bundle:
  name: main
  file: $work/bundle
YAML
if [ "$TARGET" = bare ]; then
  "$bin/examples/bare_proxy" "127.0.0.1:$port" "$up" 2 2> "$work/gateway.log" &
  ready="http://127.0.0.1:$port/healthz"
else
  GATEWAY_LOG=warn "$bin/gateway" --config "$work/gateway.yaml" 2> "$work/gateway.log" &
  ready="http://127.0.0.1:$admin/healthz"
fi
gw=$!
pids+=($gw)
for _ in $(seq 100); do curl -sf "$ready" >/dev/null && break; sleep 0.1; done
token=$("$bin/demo-token" --sub alice --role reader)
test "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:$port/orders/7")" = 200

oha --no-tui --output-format json -z "$((SECS + 3))s" -c 64 -w -H "authorization: Bearer $token" \
  "http://127.0.0.1:$port/orders/7" > "$work/oha.json" &
pids+=($!)
sleep 1.5
perf record -q -e cpu-clock -F 1999 --call-graph dwarf,32768 -p "$gw" -o "$work/perf.data" -- sleep "$SECS" 2>/dev/null
wait "${pids[-1]}" || true
out=loadtest/reports
mkdir -p "$out"
if [ "$TARGET" = bare ]; then
  report=profile-bare.txt flame=bare-pingora-flame.svg title="bare Pingora proxy under oha -c 64 (orders GET)"
else
  report=profile.txt flame=gateway-flame.svg title="gateway under oha -c 64 (orders GET, reader JWT)"
fi
set +o pipefail
{
  echo "# $TARGET profile: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) CPUs, $(uname -r)"
  python3 -c "import json;d=json.load(open('$work/oha.json'));print('# load: oha -c 64, %.0f req/s, statuses %s' % (d['summary']['requestsPerSec'], d['statusCodeDistribution']))"
  echo "## by shared object"
  perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
  echo "## self time (top 40)"
  perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 | cut -c1-160
  echo "## inclusive time of the gateway's own phases and what they call"
  perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | cut -c1-160 \
    | grep -E 'gateway::|policy_bundles::|regorus::rvm::vm::machine::RegoVM::set_input|RegoVM>::execute$|request_filter|upstream_request_filter|response_filter|logging|verify_cached|input::build|Decision::from_value|prometheus|LoadBalancer|sendto|recvfrom|epoll_wait|futex|malloc|free' | head -40
} > "$out/$report"
if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$title" > "$out/$flame"
  echo "wrote $out/$report and $out/$flame"
else
  echo "wrote $out/$report (install inferno for the flamegraph: loadtest/install.sh --flamegraph)"
fi
