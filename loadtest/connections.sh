#!/usr/bin/env bash
# What a held downstream connection costs in resident memory, the gateway beside nginx: N idle
# kept-alive connections (one request answered, then nothing), then N half-open ones (a request
# head sent without its end), each set opened, measured (RSS of the server and its children,
# /proc VmRSS) and closed in turn; then how much RSS is left a few seconds after the flood ends.
# Bare Pingora (gateway/examples/bare_proxy.rs, 2 threads, the gateway's allocator) is the floor
# the gateway is held to. nginx runs loadtest/nginx/proxy.conf.tmpl (2 workers); the gateway `threads: 2`, the example
# bundle, limits large enough to hold every connection. Writes loadtest/reports/connections.md.
#
#   loadtest/connections.sh [N]      # default 2000 (needs 2N+100 file descriptors)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
ulimit -n $((2 * n + 4096)) 2>/dev/null || true
cargo build --release -q -p gateway -p test-support --bins --example bare_proxy
source loadtest/lib.sh
start_upstream_and_bundle 2

port=$(free_port); admin=$(free_port)
printf 'listen: 127.0.0.1:%s\nadmin: 127.0.0.1:%s\nthreads: 2\nlimits: { max_connections: %s, header_timeout: 120s }\nbundle:\n  name: main\n  file: %s\n' \
  "$port" "$admin" $((2 * n)) "$work/bundle" > "$work/gateway.yaml"
GATEWAY_LOG=error "$bin/gateway" --config "$work/gateway.yaml" 2> "$work/gateway.err" &
gw_pid=$!
pids+=("$gw_pid")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" > /dev/null 2>&1 && break; sleep 0.1; done

bport=$(free_port)
"$bin/examples/bare_proxy" "127.0.0.1:$bport" "$up" 2 > "$work/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
# The same with the gateway's 4 KiB socket read buffer (gateway/src/lib.rs READ_BUFFER): what the
# gateway adds per connection beyond that choice.
b4port=$(free_port)
READ_BUFFER=4096 "$bin/examples/bare_proxy" "127.0.0.1:$b4port" "$up" 2 > "$work/bare4.log" 2>&1 &
bare4_pid=$!
pids+=("$bare4_pid")
for p in "$bport" "$b4port"; do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$p/public/x" && break; sleep 0.1; done
done

nport=$(free_port)
mkdir -p "$work/nginx/tmp"
sed -e "s|{{DIR}}|$work/nginx|g" -e "s|{{LISTEN}}|127.0.0.1:$nport|g" -e "s|{{UPSTREAM}}|$up|g" \
  loadtest/nginx/proxy.conf.tmpl > "$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" -g 'daemon off;' &
ng_pid=$!
pids+=("$ng_pid")
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$nport/public/x" && break; sleep 0.1; done

# Warm both, then measure: the Python side holds the sockets and reads /proc.
for p in "$port" "$bport" "$b4port" "$nport"; do
  for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$p/public/warm"; done
done
python3 - "$n" "$gw_pid:$port" "$bare_pid:$bport" "$bare4_pid:$b4port" "$ng_pid:$nport" > "$work/rows" <<'PY'
import os, socket, sys, time
n = int(sys.argv[1])

def rss_kib(root):
    pids = [root] + [int(p) for p in os.popen(f"ps -o pid= --ppid {root}").read().split()]
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total

def settle():
    time.sleep(1.0)

def idle(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /public/idle HTTP/1.1\r\nHost: h\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    head, _, body = got.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s

def half_open(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /public/slow HTTP/1.1\r\nHost: h\r\nX-Slow: ")
    return s

for arg in sys.argv[2:]:
    pid, port = (int(x) for x in arg.split(":"))
    base = rss_kib(pid)
    row = [pid, base]
    for kind in (idle, half_open):
        socks = [kind(port) for _ in range(n)]
        settle()
        held = rss_kib(pid)
        for s in socks:
            s.close()
        settle()
        row.append(held)
    time.sleep(5)
    row.append(rss_kib(pid))
    print(" ".join(str(x) for x in row))
PY

mkdir -p loadtest/reports
read -r _ gw_base gw_idle gw_half gw_after < <(sed -n 1p "$work/rows")
read -r _ bp_base bp_idle bp_half bp_after < <(sed -n 2p "$work/rows")
read -r _ b4_base b4_idle b4_half b4_after < <(sed -n 3p "$work/rows")
read -r _ ng_base ng_idle ng_half ng_after < <(sed -n 4p "$work/rows")
per() { awk -v a="$1" -v b="$2" -v n="$n" 'BEGIN{printf "%.1f", (a - b) * 1024 / n / 1000}'; }
{
  echo "# Memory per held connection ($(date -u +%FT%TZ), $(git rev-parse --short HEAD))"
  echo
  echo "\`loadtest/connections.sh $n\`: $n connections of each kind, held at once, RSS (VmRSS of the server and its workers)."
  echo
  echo "| server | RSS before | per idle kept-alive connection | per half-open connection | RSS 5 s after the last closed |"
  echo "|---|---|---|---|---|"
  echo "| gateway | $((gw_base / 1024)) MiB | $(per "$gw_idle" "$gw_base") KB | $(per "$gw_half" "$gw_base") KB | $((gw_after / 1024)) MiB |"
  echo "| bare Pingora (\`bare_proxy\`, 2 threads) | $((bp_base / 1024)) MiB | $(per "$bp_idle" "$bp_base") KB | $(per "$bp_half" "$bp_base") KB | $((bp_after / 1024)) MiB |"
  echo "| bare Pingora, 4 KiB read buffer (the gateway's) | $((b4_base / 1024)) MiB | $(per "$b4_idle" "$b4_base") KB | $(per "$b4_half" "$b4_base") KB | $((b4_after / 1024)) MiB |"
  echo "| nginx (2 workers) | $((ng_base / 1024)) MiB | $(per "$ng_idle" "$ng_base") KB | $(per "$ng_half" "$ng_base") KB | $((ng_after / 1024)) MiB |"
} > loadtest/reports/connections.md
cat loadtest/reports/connections.md
