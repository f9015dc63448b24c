#!/usr/bin/env bash
# What a log costs under the side-by-side runner's load: two gateways on the same bundle and
# echo upstream, one logging and one not, measured in turn (oha -c 64 for DURATION, ROUNDS
# rounds, the order alternating) on the orders GET with a token. Reports throughput per round,
# the ratio logging/not, what was logged against requests answered, and what was dropped.
#
#   loadtest/access-log.sh [ROUNDS] [DURATION]          # default 5 rounds of 8s
#       the access log to a file                          -> reports/access-log.md
#   loadtest/access-log.sh --decisions [ROUNDS] [DURATION]
#       every decision logged (`decision_logs`, sample 1.0), shipped as gzip batches to a sink
#       (the echo upstream answers the POSTs, as cheaply as a sink can) -> reports/decision-logs.md
#   loadtest/access-log.sh --decisions-plain [ROUNDS] [DURATION]
#       the same with `compression: none` (plain JSON batches, for a sink on the same host)
#                                                         -> reports/decision-logs-plain.md
set -euo pipefail
cd "$(dirname "$0")/.."
what=access
compression=gzip
if [ "${1:-}" = --decisions ]; then what=decisions; shift; fi
if [ "${1:-}" = --decisions-plain ]; then what=decisions; compression=none; shift; fi
rounds=${1:-5}
duration=${2:-8s}
cargo build --release -q -p gateway -p test-support --bins
source loadtest/lib.sh
start_upstream_and_bundle 2
token=$("$bin/demo-token" --sub alice --role reader)

# gateway NAME EXTRA: a gateway on the bundle with EXTRA config lines; its ports in NAME_port, NAME_admin.
gateway() {
  local name=$1 extra=$2 port admin
  port=$(free_port)
  admin=$(free_port)
  printf 'listen: 127.0.0.1:%s\nadmin: 127.0.0.1:%s\nthreads: 2\n%bbundle:\n  name: main\n  file: %s\n' \
    "$port" "$admin" "$extra" "$work/bundle" > "$work/$name.yaml"
  GATEWAY_LOG=error "$bin/gateway" --config "$work/$name.yaml" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  printf -v "${name}_port" %s "$port"
  printf -v "${name}_admin" %s "$admin"
  printf -v "${name}_pid" %s "${pids[-1]}"
}
# cpu_ticks PID: utime + stime of the process (all its threads), in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
gateway off ""
if [ "$what" = access ]; then
  gateway on "access_log: { path: $work/access.log }\n"
else
  gateway on "decision_logs: { sinks: [\"http://$up/v1/logs\"], sample: 1.0, compression: $compression }\n"
fi

url() { echo "http://127.0.0.1:$1/orders/7"; }
measure() { # PORT -> requests per second and successful requests
  oha --no-tui --output-format json -z "$duration" -c 64 -w -H "authorization: Bearer $token" "$(url "$1")" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["summary"]; print(round(s["requestsPerSec"]), d.get("statusCodeDistribution",{}).get("200",0))'
}
for p in "$off_port" "$on_port"; do oha --no-tui -z 2s -c 64 -H "authorization: Bearer $token" "$(url "$p")" >/dev/null; done

results=()
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
  for which in $order; do
    port_var="${which}_port"
    pid_var="${which}_pid"
    before=$(cpu_ticks "${!pid_var}")
    read -r rps ok < <(measure "${!port_var}")
    sleep 0.2 # the logging gateway's writer drains within 50 ms
    after=$(cpu_ticks "${!pid_var}")
    results+=("$r $which $rps $ok $((after - before))")
  done
done

sleep 2 # the access-log writer flushes every 200 ms; the decision-log shipper every second
metrics=$(curl -fs "http://127.0.0.1:$on_admin/metrics")
answered=$(awk '/^gateway_requests_total/ {s+=$2} END {print s}' <<< "$metrics")
if [ "$what" = access ]; then
  title="Access log"; report=access-log.md
  logged="Lines in the access log: $(wc -l < "$work/access.log")"
  dropped="gateway_access_log_dropped_total: $(awk '/^gateway_access_log_dropped_total/ {print $2}' <<< "$metrics")"
  on_means="writes the access log to a file"
else
  title="Decision logs"; report=decision-logs.md
  [ "$compression" = none ] && { title="Decision logs, plain batches"; report=decision-logs-plain.md; }
  logged="Decision events shipped (gateway_decision_logs_total{result=\"shipped\"}): $(awk '/^gateway_decision_logs_total\{result="shipped"\}/ {print $2}' <<< "$metrics")"
  dropped="gateway_decision_logs_dropped_total (all reasons): $(awk '/^gateway_decision_logs_dropped_total/ {s+=$2} END {print s}' <<< "$metrics")"
  on_means="logs every decision (\`decision_logs\`, sample 1.0) and ships $([ "$compression" = none ] && echo 'plain JSON (`compression: none`)' || echo gzip) batches to a sink that answers 200"
fi
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway || echo "+changes")

{
  echo "# $title: what it costs under load"
  echo
  echo "\`loadtest/access-log.sh $([ "$what" = decisions ] && { [ "$compression" = none ] && echo '--decisions-plain ' || echo '--decisions '; })$rounds $duration\` at $commit, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs;"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Two gateways (2 threads each) on the example bundle"
  echo "and one echo upstream (2 threads); \`oha -c 64 -z $duration\` on GET /orders/7 with a bearer token,"
  echo "one gateway at a time, the order alternating per round. \`on\` $on_means."
  echo
  echo "Throughput on this shared 2-core machine moves by ±20% between runs; the gateway's own CPU time"
  echo "per 10k requests (utime + stime of its process, its log thread included) is the steadier figure."
  echo
  echo "| round | off req/s | on req/s | on / off | off CPU-s / 10k | on CPU-s / 10k | on / off CPU |"
  echo "|---|---|---|---|---|---|---|"
  python3 - "$(getconf CLK_TCK)" "${results[@]}" <<'PY'
import sys, statistics
hz = int(sys.argv[1])
rows = {}
for item in sys.argv[2:]:
    r, which, rps, ok, ticks = item.split()
    rows.setdefault(int(r), {})[which] = (int(rps), int(ticks) / hz / max(int(ok), 1) * 10000)
tput, cpu = [], []
for r in sorted(rows):
    (off, off_cpu), (on, on_cpu) = rows[r]["off"], rows[r]["on"]
    tput.append(on / off)
    cpu.append(on_cpu / off_cpu)
    print(f"| {r} | {off} | {on} | {on/off:.3f} | {off_cpu:.3f} | {on_cpu:.3f} | {on_cpu/off_cpu:.3f} |")
med = statistics.median
print(f"| **median** | {med(v['off'][0] for v in rows.values()):.0f} | {med(v['on'][0] for v in rows.values()):.0f} | **{med(tput):.3f}** ({min(tput):.3f}–{max(tput):.3f}) | {med(v['off'][1] for v in rows.values()):.3f} | {med(v['on'][1] for v in rows.values()):.3f} | **{med(cpu):.3f}** ({min(cpu):.3f}–{max(cpu):.3f}) |")
PY
  echo
  echo "$logged; requests the logging gateway answered (gateway_requests_total): $answered;"
  echo "$dropped."
} > "loadtest/reports/$report"
cat "loadtest/reports/$report"
