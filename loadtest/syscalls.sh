#!/usr/bin/env bash
# Counts syscalls per proxied request with `strace -c -f` attached to each server after its
# warm-up: nginx `proxy_pass` (one worker), bare Pingora (`gateway/examples/bare_proxy.rs`, one
# worker thread) and the gateway (one worker thread; `/orders/7` with a reader JWT), in front of the
# same echo upstream on loopback. Counts, not times: strace slows every server alike, and what it
# counts does not depend on the machine's load.
# Writes loadtest/reports/syscalls.md.
# Usage: loadtest/syscalls.sh [REQUESTS]   (default 4000; about a minute; cleans up after itself)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-4000}
export PATH="$HOME/.cargo/bin:$PATH"
for t in strace oha python3; do
  command -v "$t" >/dev/null || { echo "$t missing: loadtest/install.sh" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx missing: loadtest/install.sh" >&2; exit 1; }
cargo build --release -p gateway -p test-support -p loadtest-tools --bins --example bare_proxy >&2
. loadtest/lib.sh   # bin, work, pids; all stopped and removed on exit
start_upstream_and_bundle 1
token=$("$bin/demo-token" --sub alice --role reader)
auth="authorization: Bearer $token"

wait_for() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 never answered" >&2; exit 1; }

# measure LABEL URL PID: N requests to URL (oha -c 8, after 500 of warm-up) with strace attached
# to every thread of PID; the per-syscall counts go to $work/LABEL.counts ("syscall calls").
measure() {
  local label=$1 url=$2 pid=$3
  oha --no-tui -n 500 -c 8 -H "$auth" "$url" > /dev/null
  strace -f -c -p "$pid" -o "$work/$label.strace" 2> "$work/$label.strace.err" &
  local sp=$!
  # strace says "Process N attached" for each thread once it is in.
  for _ in $(seq 50); do grep -q attached "$work/$label.strace.err" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  oha --no-tui -n "$N" -c 8 -H "$auth" --output-format json "$url" > "$work/$label.json"
  kill -INT "$sp"
  wait "$sp" 2>/dev/null || true
  local ok
  ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['statusCodeDistribution'].get('200', 0))" "$work/$label.json")
  [ "$ok" = "$N" ] || { echo "$label: only $ok of $N requests answered 200" >&2; exit 1; }
  # Rows of `strace -c`: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk '$NF != "total" && $1 ~ /^[0-9.]+$/ && NF >= 5 { print $NF, $4 }' "$work/$label.strace" > "$work/$label.counts"
  echo "$label: $(awk '{s += $2} END {print s}' "$work/$label.counts") syscalls for $N requests" >&2
}

# nginx: one worker, the side-by-side runner's proxy config otherwise.
ndir=$work/nginx
mkdir -p "$ndir"/tmp/{body,proxy,fastcgi,uwsgi,scgi}
nport=$(free_port)
conf=$(< loadtest/nginx/proxy.conf.tmpl)
conf=${conf//'{{DIR}}'/$ndir}
conf=${conf//'{{LISTEN}}'/127.0.0.1:$nport}
conf=${conf//'{{UPSTREAM}}'/$up}
printf '%s\n' "${conf/worker_processes 2;/worker_processes 1;}" > "$ndir/nginx.conf"
"$NGINX" -p "$ndir" -c "$ndir/nginx.conf" -e "$ndir/error.log" -g 'daemon off;' &
pids+=($!)
wait_for "http://127.0.0.1:$nport/orders/7"
worker=$(pgrep -P "${pids[-1]}" | head -1)
measure nginx "http://127.0.0.1:$nport/orders/7" "$worker"

bp=$(free_port)
"$bin/examples/bare_proxy" "127.0.0.1:$bp" "$up" 1 > "$work/bare.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$bp/orders/7"
measure bare "http://127.0.0.1:$bp/orders/7" "${pids[-1]}"

one_thread_gateway_config
GATEWAY_LOG=warn "$bin/gateway" --config "$work/gateway.yaml" > "$work/gateway.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$admin/readyz"
measure gateway "http://127.0.0.1:$port/orders/7" "${pids[-1]}"

python3 - "$work" "$N" <<'PY' > loadtest/reports/syscalls.md
import sys, subprocess, datetime
work, n = sys.argv[1], int(sys.argv[2])
servers = [("nginx", "nginx `proxy_pass`, 1 worker"), ("bare", "bare Pingora, 1 thread"), ("gateway", "the gateway, 1 thread, `/orders/7` + JWT")]
counts = {}
for label, _ in servers:
    counts[label] = {}
    for line in open(f"{work}/{label}.counts"):
        name, calls = line.split()
        counts[label][name] = int(calls)
names = sorted({k for c in counts.values() for k in c}, key=lambda k: -max(c.get(k, 0) for c in counts.values()))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# Syscalls per proxied request (strace -c -f)\n")
print(f"`loadtest/syscalls.sh {n}` at {commit}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC: {n} requests by `oha -c 8` (keep-alive) after")
print("500 of warm-up, strace attached to every thread of the server for exactly those requests, echo upstream")
print("on loopback (its upstream connections kept alive by each server). Per request, by syscall:\n")
print("| syscall | " + " | ".join(d for _, d in servers) + " |")
print("|---|" + "---|" * len(servers))
for k in names:
    row = [counts[l].get(k, 0) / n for l, _ in servers]
    if max(row) < 0.01:
        continue
    print(f"| `{k}` | " + " | ".join(f"{v:.2f}" for v in row) + " |")
tot = [sum(counts[l].values()) / n for l, _ in servers]
print("| **total** | " + " | ".join(f"**{v:.2f}**" for v in tot) + " |")
print()
print(f"Ratios: bare Pingora / nginx {tot[1] / tot[0]:.2f}, gateway / nginx {tot[2] / tot[0]:.2f}, gateway / bare Pingora {tot[2] / tot[1]:.2f}.")
PY
cat loadtest/reports/syscalls.md
