# Shared by profile.sh, instructions.sh and compare.sh's TLS rows (sourced from the repository
# root, not run): the release binaries in `bin`, a scratch directory `work`, and `pids`, an array
# of processes (children of the sourcing shell) that are stopped and reaped, with `work` removed,
# when the script exits.
bin=${BIN_DIR:-target/${PROFILE:-release}}
work=$(mktemp -d)
pids=()
cleanup() {
  local p i
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Give them 5 s to exit (nginx's master waits for its workers), SIGKILL what still runs, reap.
  for i in $(seq 50); do
    running
    [ -z "$alive" ] && break
    sleep 0.1
  done
  running
  for p in $alive; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# running: the processes of `pids` that have not exited yet (exited ones are zombies till reaped).
running() {
  local p
  alive=
  for p in "${pids[@]}"; do
    # The state follows the command name, which is in parentheses and may hold spaces.
    [ "$(sed 's/.*) //; s/ .*//' "/proc/$p/stat" 2>/dev/null || echo Z)" = Z ] || alive="$alive $p"
  done
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_upstream_and_bundle THREADS: an echo upstream on an ephemeral port (its address in `up`)
# and the example bundle in $work/bundle, pointed at it.
start_upstream_and_bundle() {
  "$bin/echo-upstream" --listen 127.0.0.1:0 --threads "$1" > "$work/up.out" &
  pids+=($!)
  for _ in $(seq 50); do grep -q listening "$work/up.out" && break; sleep 0.1; done
  up=$(sed -n 's/^listening on //p' "$work/up.out")
  [ -n "$up" ] || { echo "echo-upstream did not start" >&2; exit 1; }
  cp -r policy-bundles/examples/api-gateway "$work/bundle"
  sed -i "s/127.0.0.1:9100/$up/" "$work/bundle/gateway/data.yaml"
}

# start_gateway EXTRA: a gateway with two worker threads on the example bundle in $work/bundle,
# on fresh ports (`port`, `admin`), with EXTRA config lines (newline-terminated, `printf %b`);
# its pid in `gw`; returns once it is ready.
start_gateway() {
  port=$(free_port); admin=$(free_port)
  printf 'listen: 127.0.0.1:%s\nadmin: 127.0.0.1:%s\nthreads: 2\n%bbundle:\n  name: main\n  file: %s\n' \
    "$port" "$admin" "$1" "$work/bundle" > "$work/gateway.yaml"
  GATEWAY_LOG=warn "$bin/gateway" --config "$work/gateway.yaml" > "$work/gateway.log" 2>&1 &
  gw=$!
  pids+=("$gw")
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && return; sleep 0.1; done
  echo "the gateway did not become ready: $work/gateway.log" >&2
  exit 1
}

# one_thread_gateway_config: $work/gateway.yaml, a gateway with one worker thread on the example
# bundle in $work/bundle, on fresh ports (`port`, `admin`).
one_thread_gateway_config() {
  port=$(free_port); admin=$(free_port)
  cat > "$work/gateway.yaml" <<EOF
listen: 127.0.0.1:$port
admin: 127.0.0.1:$admin
threads: 1
bundle:
  name: main
  file: $work/bundle
EOF
}

# ---- The TLS rows of compare.sh (`--tls`): certificates, the two TLS peers, probes, measuring ----
# Certificates, keys and h2load's per-request logs stay in `work` (removed on exit); configs,
# server logs and the samples go to `logs` (target/loadtest/tls-STAMP), kept like loadbench's.

# tls_certs DIR: a CA and a server certificate for api.localhost, localhost and 127.0.0.1
# (ECDSA P-256) as DIR/ca.pem, DIR/api.pem, DIR/api.key; `certs_from` says how they were made.
tls_certs() {
  local dir=$1
  mkdir -p "$dir"
  if [ -x "$bin/demo-certs" ]; then
    "$bin/demo-certs" --out "$dir" > /dev/null
    certs_from="test-support demo-certs (ECDSA P-256, SANs api.localhost, localhost, 127.0.0.1)"
    return
  fi
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj "/CN=loadtest CA" 2> /dev/null
  openssl req "${ec[@]}" -keyout "$dir/api.key" -out "$dir/api.csr" -subj "/CN=localhost" 2> /dev/null
  printf '%s\n' "subjectAltName=DNS:api.localhost,DNS:localhost,IP:127.0.0.1" \
    "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" > "$dir/api.ext"
  openssl x509 -req -in "$dir/api.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -out "$dir/api.pem" -extfile "$dir/api.ext" 2> /dev/null
  certs_from="openssl req -x509 (a CA, then a leaf: ECDSA P-256, SANs api.localhost, localhost, 127.0.0.1)"
}

# start_nginx_tls UPSTREAM CERTS SUITE: nginx from nginx/tls-proxy.conf.tmpl on an ephemeral TLS
# port (`nginx_tls_port`) and a plaintext one (`nginx_plain_port`), its pid in `nginx_tls_pid`,
# in the foreground, stopped on exit.
start_nginx_tls() {
  local dir=$logs/nginx-tls conf port
  mkdir -p "$dir"/tmp/{body,proxy,fastcgi,uwsgi,scgi}
  port=$(free_port)
  conf=$(< loadtest/nginx/tls-proxy.conf.tmpl)
  conf=${conf//'{{DIR}}'/$dir}
  conf=${conf//'{{LISTEN}}'/127.0.0.1:$port}
  nginx_plain_port=$(free_port)
  conf=${conf//'{{PLAIN_LISTEN}}'/127.0.0.1:$nginx_plain_port}
  conf=${conf//'{{UPSTREAM}}'/$1}
  conf=${conf//'{{CERT}}'/$2/api.pem}
  conf=${conf//'{{KEY}}'/$2/api.key}
  conf=${conf//'{{CIPHERSUITE}}'/$3}
  case $conf in *'{{'*) echo "tls-proxy.conf.tmpl: a placeholder was left unrendered" >&2; exit 1 ;; esac
  printf '%s\n' "$conf" > "$dir/nginx.conf"
  "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off; user root;' \
    > "$logs/nginx-tls.log" 2>&1 &
  nginx_tls_pid=$!
  pids+=("$nginx_tls_pid")
  nginx_tls_port=$port
  wait_tls "$port" || { echo "nginx (TLS) did not start; see $dir" >&2; exit 1; }
}

# start_gateway_tls CERTS: the gateway (`threads: THREADS`, TLS 1.3 only, the example bundle in
# $work/bundle) on an ephemeral TLS port (`gw_tls_port`) and a plaintext one (`gw_plain_port`,
# `plaintext_listen`), its pid in `gw_tls_pid`, stopped on exit.
start_gateway_tls() {
  local admin
  gw_tls_port=$(free_port)
  gw_plain_port=$(free_port)
  admin=$(free_port)
  cat > "$logs/gateway-tls.yaml" <<YAML
listen: 127.0.0.1:$gw_tls_port
plaintext_listen: 127.0.0.1:$gw_plain_port
admin: 127.0.0.1:$admin
threads: $threads
tls:
  certificates:
    - { cert_file: $1/api.pem, key_file: $1/api.key }
  min_version: "1.3"
bundle:
  name: main
  file: $work/bundle
YAML
  GATEWAY_LOG=warn,pingora=error "$bin/gateway" --config "$logs/gateway-tls.yaml" \
    > "$logs/gateway-tls.log" 2> "$logs/gateway-tls.err" &
  gw_tls_pid=$!
  pids+=("$gw_tls_pid")
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$admin/healthz" > /dev/null && break; sleep 0.1; done
  wait_tls "$gw_tls_port" || { echo "gateway (TLS) did not start; see $logs/gateway-tls.err" >&2; exit 1; }
}

# wait_tls PORT: true once a TLS handshake to 127.0.0.1:PORT succeeds (10 s at most).
wait_tls() {
  for _ in $(seq 100); do
    timeout 2 openssl s_client -connect "127.0.0.1:$1" -servername localhost < /dev/null > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# tls_handshake PORT SUITES ALPN: "protocol cipher group alpn" a TLS 1.3 client offering SUITES
# (in that order of preference) and ALPN gets from 127.0.0.1:PORT (SNI localhost, CA-verified).
tls_handshake() {
  timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername localhost -tls1_3 \
    -ciphersuites "$2" -alpn "$3" -CAfile "$certs/ca.pem" -verify_return_error < /dev/null 2> /dev/null \
    | awk '/^New, /{p=$2; c=$NF} /^Server Temp Key:/{g=$4; sub(",","",g)} /^ALPN protocol:/{a=$3}
           END{print p, c, g, (a ? a : "none")}' | tr -d ','
}

# smoke_tls NAME TLS_PORT PLAIN_PORT TOKEN PEER: the orders GET over HTTPS with HTTP/1.1 and
# HTTP/2, and over the plaintext listener, answers 200 and reaches the upstream with the right
# x-forwarded-proto; on the gateway (PEER=d) the policy ran and no token gets 401.
smoke_tls() {
  local name=$1 token=$4 peer=$5 how v url proto port body code
  for how in "--http1.1 https $2" "--http2 https $2" "--http1.1 http $3"; do
    read -r v proto port <<< "$how"
    url="$proto://localhost:$port/orders/7"
    local c=(-s --cacert "$certs/ca.pem" --resolve "localhost:$port:127.0.0.1" --max-time 5 "$v")
    body=$(curl "${c[@]}" -D "$work/smoke.h" -H "authorization: Bearer $token" "$url")
    code=$(awk 'NR==1{print $2}' "$work/smoke.h")
    [ "$code" = 200 ] || { echo "$name $url $v: GET /orders/7 answered $code: $body" >&2; exit 1; }
    grep -qi "\"x-forwarded-proto\": *\"$proto\"" <<< "$body" \
      || { echo "$name $url $v: the upstream did not see x-forwarded-proto $proto: $body" >&2; exit 1; }
    if [ "$peer" = d ]; then
      grep -q '"x-user-id": *"alice"' <<< "$body" || { echo "$name $url $v: no x-user-id from the decision" >&2; exit 1; }
      grep -qi '^x-decided-by: http.orders' "$work/smoke.h" || { echo "$name $url $v: no x-decided-by" >&2; exit 1; }
      code=$(curl "${c[@]}" -o /dev/null -w '%{http_code}' "$url")
      [ "$code" = 401 ] || { echo "$name $url $v: a request without a token got $code" >&2; exit 1; }
    fi
  done
}

# tlsbench ARGS...: the runner's measuring and reporting (Python: /proc readings, oha's JSON,
# h2load's text and per-request log, the Markdown section and the JSON samples).
tlsbench() {
  [ -f "$work/tlsbench.py" ] || tlsbench_source > "$work/tlsbench.py"
  python3 "$work/tlsbench.py" "$@"
}

tlsbench_source() {
  cat <<'PY'
"""compare.sh --tls: measure one load run, probe a client's TLS offer, write the report."""
import argparse, json, os, re, resource, signal, statistics, subprocess, sys, time

CLK = os.sysconf("SC_CLK_TCK")
SUITES = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
          0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0x1304: "TLS_AES_128_CCM_SHA256"}


def stats():
    """{pid: (ppid, utime + stime ticks)} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            f = s[s.rfind(")") + 2:].split()
            out[int(d)] = (int(f[1]), int(f[11]) + int(f[12]))
    return out


def tree_cpu(roots, st):
    """CPU seconds of `roots` and all their descendants."""
    kids = {}
    for pid, (ppid, _) in st.items():
        kids.setdefault(ppid, []).append(pid)
    todo, seen = list(roots), set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, []))
    return sum(st[p][1] for p in seen if p in st) / CLK


def busy_seconds():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pct(sorted_ms, q):
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def parse_oha(text):
    v = json.loads(text)
    codes = v.get("statusCodeDistribution") or {}
    errs = v.get("errorDistribution") or {}
    lat = v.get("latencyPercentiles") or {}
    ms = lambda k: (lat.get(k) or float("nan")) * 1000.0
    requests = sum(codes.values()) + sum(errs.values())
    errors = sum(n for c, n in codes.items() if not c.startswith("2")) + sum(errs.values())
    return {"rps": v["summary"]["requestsPerSec"], "p50": ms("p50"), "p99": ms("p99"),
            "p999": ms("p99.9"), "requests": requests, "errors": errors}


def parse_h2load(text, log):
    num = lambda pat: float(re.search(pat, text).group(1))
    # "failed" (a subset of "done"): answered with a status h2load does not count as success,
    # errored or timed out. The status counts are taken as headers arrive, so they may include
    # requests still in flight at the deadline and are not used.
    done, failed = num(r"(\d+) done"), num(r"(\d+) failed")
    lat = sorted(int(l.split("\t")[2]) / 1000.0 for l in open(log) if l.count("\t") == 2)
    tls = {k: (re.search(rf"^{k}: (.*)$", text, re.M) or [None, "?"])[1].strip()
           for k in ("TLS Protocol", "Cipher", "Server Temp Key", "Application protocol")}
    return {"rps": num(r"finished in [\d.]+s, ([\d.]+) req/s"), "p50": pct(lat, 0.50),
            "p99": pct(lat, 0.99), "p999": pct(lat, 0.999), "requests": int(done),
            "errors": int(failed), "tls": tls}


def measure(a):
    """Runs the load command once and appends one sample (JSON line) to --out."""
    st0, m0, c0 = stats(), busy_seconds(), children_cpu()
    s0, u0 = tree_cpu(a.servers, st0), tree_cpu([a.upstream], st0)
    child = subprocess.Popen(a.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    signal.signal(signal.SIGTERM, lambda *_: (child.kill(), child.wait(), sys.exit(143)))
    out, err = child.communicate()
    st1, m1, c1 = stats(), busy_seconds(), children_cpu()
    if child.returncode != 0:
        sys.exit(f"{a.cmd[0]} failed ({child.returncode}): {err.decode(errors='replace')[-2000:]}")
    text = out.decode(errors="replace")
    if a.raw:
        open(a.raw, "w").write(text)
    s = parse_oha(text) if a.tool == "oha" else parse_h2load(text, a.log)
    want = {"TLS Protocol": "TLSv1.3", "Cipher": a.suite, "Application protocol": "h2"}
    if "tls" in s and any(s["tls"][k] != v for k, v in want.items()):
        sys.exit(f"{a.key}: h2load negotiated {s['tls']}, not {want}")
    if a.tool == "h2load" and a.log:
        os.remove(a.log)
    server, upstream, client = tree_cpu(a.servers, st1) - s0, tree_cpu([a.upstream], st1) - u0, c1 - c0
    s.update(round=a.round, target=a.key, tool=a.tool, server_cpu=server, upstream_cpu=upstream,
             client_cpu=client, other_cpu=max(0.0, (m1 - m0) - server - upstream - client))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(s) + "\n")
    print(f"tls: {'warm-up' if a.round < 0 else f'round {a.round + 1}'} ({a.key}) {s['rps']:>9.0f} req/s  p50 {s['p50']:.2f} ms  p99 {s['p99']:.2f} ms"
          f"  p99.9 {s['p999']:.2f} ms  errors {s['errors']}  cpu {server:.2f}s (+upstream {upstream:.2f}s,"
          f" {a.tool} {client:.2f}s, others {s['other_cpu']:.2f}s)"
          + (f"  [{s['tls']['TLS Protocol']} {s['tls']['Cipher']} {s['tls']['Application protocol']}]"
             if "tls" in s else ""), file=sys.stderr)


def hello_field(hexdump, name):
    m = re.search(r"Handshake \[length [0-9a-f]+\], " + name + r"\n((?:    [0-9a-f ]+\n)+)", hexdump)
    return bytes.fromhex("".join(m.group(1).split())) if m else b""


def offer_probe(a):
    """What a client offers: the TLS 1.3 suites of its ClientHello in order, as a server that
    takes the client's order (openssl s_server, as rustls does by default) sees them."""
    port = int(a.port)
    srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", a.cert,
                            "-key", a.key, "-tls1_3", "-www", "-msg"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)
        subprocess.run([c.replace("PORT", str(port)) for c in a.cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, check=False)
        time.sleep(0.3)
    finally:
        srv.kill()
    ch = hello_field(srv.communicate()[0], "ClientHello")
    if len(ch) < 40:
        sys.exit("offer-probe: saw no ClientHello")
    i = 4 + 2 + 32
    i += 1 + ch[i]
    n = int.from_bytes(ch[i:i + 2], "big")
    offered = [int.from_bytes(ch[i + 2 + k:i + 4 + k], "big") for k in range(0, n, 2)]
    print(":".join(SUITES[s] for s in offered if s in SUITES))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--key", required=True)
    m.add_argument("--round", type=int, required=True)
    m.add_argument("--tool", choices=["oha", "h2load"], required=True)
    m.add_argument("--servers", type=lambda s: [int(x) for x in s.split(",")], required=True)
    m.add_argument("--upstream", type=int, required=True)
    m.add_argument("--out")
    m.add_argument("--log")
    m.add_argument("--raw")
    m.add_argument("--suite", help="the TLS 1.3 suite h2load must have negotiated")
    m.add_argument("cmd", nargs=argparse.REMAINDER)
    o = sub.add_parser("offer-probe")
    for k in ("--port", "--cert", "--key"):
        o.add_argument(k, required=True)
    o.add_argument("cmd", nargs=argparse.REMAINDER)
    r = sub.add_parser("report")
    for k in ("--samples", "--meta", "--md", "--json"):
        r.add_argument(k, required=True)
    a = p.parse_args()
    if getattr(a, "cmd", None) and a.cmd[0] == "--":
        a.cmd = a.cmd[1:]
    {"measure": measure, "offer-probe": offer_probe, "report": report}[a.what](a)
PY
  tlsbench_report_source
  printf '\nmain()\n'
}

tlsbench_report_source() {
  cat <<'PY'

BEGIN = "<!-- tls rows: begin (written by loadtest/compare.sh --tls; replaced by its next run) -->"
END = "<!-- tls rows: end -->"


def spread(v):
    v = sorted(x for x in v if x == x)
    return (statistics.median(v), v[0], v[-1]) if v else (float("nan"),) * 3


def per_round(samples, x, y, f):
    xs = {s["round"]: s for s in samples if s["target"] == x}
    ys = {s["round"]: s for s in samples if s["target"] == y}
    return [f(xs[r]) / f(ys[r]) for r in sorted(xs) if r in ys and f(ys[r])]


def cpu10k(s):
    return s["server_cpu"] / s["requests"] * 1e4 if s["requests"] else float("nan")


def table(meta, samples):
    rows = ["| target | client | req/s (median, min–max) | p50 ms | p99 ms | p99.9 ms | errors | server CPU s / 10k req"
            " | upstream CPU s / 10k | client CPU s / 10k | others' CPU s (median) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in meta["targets"]:
        v = [s for s in samples if s["target"] == t["key"]]
        if not v:
            continue
        rps, lo, hi = spread([s["rps"] for s in v])
        reqs = sum(s["requests"] for s in v)
        k = lambda f: sum(s[f] for s in v) / reqs * 1e4
        med = lambda f: spread([s[f] for s in v])[0]
        rows.append(f"| ({t['key']}) {t['label']} | {t['client']} | **{rps:.0f}** ({lo:.0f}–{hi:.0f}, ±{(hi - lo) / 2 / rps * 100:.1f}%)"
                    f" | {med('p50'):.2f} | {med('p99'):.2f} | {med('p999'):.2f} | {sum(s['errors'] for s in v)} of {reqs}"
                    f" | {k('server_cpu'):.3f} | {k('upstream_cpu'):.3f} | {k('client_cpu'):.3f} | {med('other_cpu'):.2f} |")
    return rows


def ratio_rows(samples):
    have = {s["target"] for s in samples}
    rows = ["| ratio (per round) | median | min–max |", "|---|---|---|"]
    for x, y, name in (("d-tls-h1", "b-tls-h1", "gateway / nginx, HTTPS, HTTP/1.1"),
                       ("d-tls-h2", "b-tls-h2", "gateway / nginx, HTTPS, HTTP/2"),
                       ("d-tls-hs", "b-tls-hs", "gateway / nginx, a TLS handshake per request"),
                       ("d-plain-h1", "b-plain-h1", "gateway / nginx, plaintext HTTP/1.1, same processes")):
        if x not in have or y not in have:
            continue
        for what, f in (("throughput", lambda s: s["rps"]), ("p99", lambda s: s["p99"]),
                        ("p50", lambda s: s["p50"]), ("server CPU per request", cpu10k)):
            m, lo, hi = spread(per_round(samples, x, y, f))
            bold = "**" if what in ("throughput", "p99") else ""
            rows.append(f"| ({x})/({y}) {what} ({name}) | {bold}{m:.2f}{bold} | {lo:.2f}–{hi:.2f} |")
    for peer, name in (("d", "the gateway"), ("b", "nginx")):
        x, y = f"{peer}-tls-h1", f"{peer}-plain-h1"
        if x in have and y in have:
            m, lo, hi = spread(per_round(samples, x, y, lambda s: s["rps"]))
            rows.append(f"| ({x})/({y}) throughput (what TLS costs {name}) | {m:.2f} | {lo:.2f}–{hi:.2f} |")
            m, lo, hi = spread(per_round(samples, x, y, cpu10k))
            rows.append(f"| ({x})/({y}) server CPU per request ({name}) | {m:.2f} | {lo:.2f}–{hi:.2f} |")
            added = [a - b for a, b in zip(*(sorted_by_round(samples, k, cpu10k) for k in (x, y)))]
            m, lo, hi = spread(added)
            rows.append(f"| ({x}) − ({y}) server CPU s / 10k req: what TLS adds to {name}, absolute | {m:.3f} | {lo:.3f}–{hi:.3f} |")
    return rows


def sorted_by_round(samples, key, f):
    return [f(s) for s in sorted((s for s in samples if s["target"] == key), key=lambda s: s["round"])]


def section(meta, samples):
    m = meta
    out = [BEGIN, "", "## HTTPS: TLS 1.3 termination with HTTP/1.1 and HTTP/2 (gateway and nginx)", "",
           "| | |", "|---|---|"]
    for k in ("date", "machine", "commit", "command", "tools", "load average at start", "raw logs and configs",
              "certificate", "TLS"):
        out.append(f"| {k} | {m[k]} |")
    out += ["", m["load"], "", *table(m, samples), "", m["cpu_note"], "", "### Ratios (per round, then median and range)", "",
            *ratio_rows(samples), "", "### What each side negotiated", "", "| target | check | protocol, cipher suite, group, ALPN |",
            "|---|---|---|"]
    out += [f"| {h['target']} | {h['check']} | {h['saw']} |" for h in m["handshakes"]]
    out += ["", "### Every measurement (noise)", "",
            "| round | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU s | client CPU s | others' CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {s['round'] + 1} | ({s['target']}) | {s['rps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} | {s['p999']:.2f}"
            f" | {s['errors']} | {s['server_cpu']:.2f} | {s['client_cpu']:.2f} | {s['other_cpu']:.2f} |" for s in samples]
    return "\n".join(out + ["", END, ""])


def report(a):
    """Puts the TLS section into compare.md (replacing an earlier one) and the samples into compare.json."""
    meta = json.load(open(a.meta))
    samples = [json.loads(l) for l in open(a.samples) if l.strip()]
    text = section(meta, samples)
    md = open(a.md).read() if os.path.exists(a.md) else "# Side by side: the gateway and nginx\n"
    if BEGIN in md:
        md = md[:md.index(BEGIN)] + md[md.index(END) + len(END):].lstrip("\n")
    open(a.md, "w").write(md.rstrip("\n") + "\n\n" + text)
    old = json.load(open(a.json)) if os.path.exists(a.json) else []
    keep = [s for s in old if "-tls-" not in str(s.get("target", ""))]
    for s in samples:
        s["run"] = {"date": meta["date"], "commit": meta["commit"]}
    open(a.json, "w").write(json.dumps(keep + samples, indent=2) + "\n")
    print(text)
PY
}

# peak_rss_mib PID: VmHWM summed over PID and its children (nginx: master and workers), in MiB.
peak_rss_mib() {
  local p total=0 kib
  for p in "$1" $(ps -o pid= --ppid "$1"); do
    kib=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2> /dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  awk -v k="$total" 'BEGIN{printf "%.1f", k / 1024}'
}

# tls_load_cmd KEY PORT SECONDS: the load command (an array in `load`) for row KEY against PORT.
tls_load_cmd() {
  local ms url="https://localhost:$2/orders/7"
  ms=$(awk -v s="$3" 'BEGIN{printf "%dms", s * 1000}')
  case $1 in
    *-plain-h1) load=(oha --no-tui --output-format json -z "$ms" -c "$connections" -w
                -H "authorization: Bearer $token" "http://127.0.0.1:$2/orders/7") ;;
    *-hs) load=(oha --no-tui --output-format json -z "$ms" -c "$connections" -w --disable-keepalive --cacert "$certs/ca.pem"
                --connect-to "localhost:$2:127.0.0.1:$2" -H "authorization: Bearer $token" "$url") ;;
    *-h1) load=(oha --no-tui --output-format json -z "$ms" -c "$connections" -w --cacert "$certs/ca.pem"
                --connect-to "localhost:$2:127.0.0.1:$2" -H "authorization: Bearer $token" "$url") ;;
    *-h2) load=(h2load -c "$connections" -m "$streams" -t "$threads" -D "$ms" --tls13-ciphers="$suite"
                --connect-to="127.0.0.1:$2" -H "authorization: Bearer $token" --log-file="$work/h2load.log" "$url") ;;
  esac
}

# tls_measure KEY ROUND|warmup SECONDS: one run of row KEY; ROUND "warmup" records nothing.
tls_measure() {
  local key=$1 round=$2 port servers
  case $key in
    b-plain-*) port=$nginx_plain_port servers=$nginx_tls_pid ;;
    d-plain-*) port=$gw_plain_port servers=$gw_tls_pid ;;
    b-*) port=$nginx_tls_port servers=$nginx_tls_pid ;;
    d-*) port=$gw_tls_port servers=$gw_tls_pid ;;
  esac
  tls_load_cmd "$key" "$port" "$3"
  local tool=${load[0]} out=()
  if [ "$round" = warmup ]; then
    round=-1
  else
    out=(--out "$logs/samples.jsonl" --raw "$logs/raw/$key-$((round + 1)).out")
  fi
  tlsbench measure --key "$key" --round "$round" --tool "$tool" --servers "$servers" --upstream "$up_pid" \
    "${out[@]}" --log "$work/h2load.log" --suite "$suite" -- "${load[@]}" &
  pids+=($!)
  wait $!
  unset 'pids[-1]' # done: its pid may be reused, so cleanup must not signal it
}

# tls_probe_handshakes: what each side negotiates with each load client, recorded in
# $logs/handshakes.txt (target|check|saw); fails unless every one is TLS 1.3 with `suite`.
tls_probe_handshakes() {
  local oha_offer saw port key name p
  p=$(free_port)
  oha_offer=$(tlsbench offer-probe --port "$p" --cert "$certs/api.pem" --key "$certs/api.key" -- \
    oha --no-tui -n 1 -c 1 --cacert "$certs/ca.pem" --connect-to "localhost:PORT:127.0.0.1:PORT" "https://localhost:PORT/")
  : > "$logs/handshakes.txt"
  for key in b d; do
    if [ $key = b ]; then port=$nginx_tls_port name="(b-tls) nginx"; else port=$gw_tls_port name="(d-tls) gateway"; fi
    saw=$(tls_handshake "$port" "$oha_offer" http/1.1)
    echo "$name|openssl s_client offering oha's suites in oha's order ($oha_offer), ALPN http/1.1|$saw" >> "$logs/handshakes.txt"
    saw=$(tls_handshake "$port" "$suite" h2)
    echo "$name|openssl s_client offering what h2load is given (--tls13-ciphers=$suite), ALPN h2|$saw" >> "$logs/handshakes.txt"
    saw=$(tls_handshake "$port" "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256" h2)
    echo "$name|(not used) h2load's default order, AES-128 first, ALPN h2|$saw" >> "$logs/handshakes.txt"
  done
  oha --no-tui -n 4 -c 1 --cacert "$certs/ca.pem" --connect-to "localhost:$nginx_tls_port:127.0.0.1:$nginx_tls_port" \
    "https://localhost:$nginx_tls_port/_tls" > /dev/null
  saw=$(tail -1 "$logs/nginx-tls/tls.log")
  echo "(b-tls) nginx|oha itself (nginx's \$ssl_protocol \$ssl_cipher \$ssl_curve \$server_protocol)|$saw" >> "$logs/handshakes.txt"
  cat "$logs/handshakes.txt" >&2
  # Every check but the unused default order must land on the pinned suite.
  if grep -v '(not used)' "$logs/handshakes.txt" | grep -v "TLSv1.3 $suite " | grep -q .; then
    echo "tls: the two sides did not negotiate TLS 1.3 with $suite (above)" >&2
    exit 1
  fi
}

# tls_meta COMMAND: $logs/meta.json, what the report states about the run.
tls_meta() {
  local commit dirty=""
  commit=$(git rev-parse --short HEAD)
  [ -z "$(git status --porcelain --untracked-files=no)" ] || dirty=" with uncommitted changes in the work tree"
  TOKEN_VALUE=$token TLS_WORK=$work TLS_COMMAND=$1 TLS_COMMIT="$commit$dirty" TLS_LOGS=$logs TLS_CERTS=$certs_from TLS_SUITE=$suite \
  TLS_ROUNDS=$rounds TLS_DURATION=$duration TLS_WARMUP=$warmup TLS_CONN=$connections TLS_STREAMS=$streams \
  TLS_THREADS=$threads TLS_ORDERS="${orders[*]}" TLS_KEYS="${keys[*]}" TLS_LOADAVG=$loadavg \
  TLS_RSS_NGINX=$(peak_rss_mib "$nginx_tls_pid") TLS_RSS_GW=$(peak_rss_mib "$gw_tls_pid") \
  TLS_OHA="$(tls_load_cmd x-h1 PORT "$duration"; echo "${load[*]}")" \
  TLS_H2LOAD="$(tls_load_cmd x-h2 PORT "$duration"; echo "${load[*]}")" \
  TLS_PLAIN="$(tls_load_cmd x-plain-h1 PORT "$duration"; echo "${load[*]}")" \
  TLS_HS="$(tls_load_cmd x-hs PORT "$duration"; echo "${load[*]}")" \
  TLS_TOOLS="$(oha --version); $(h2load --version | head -1); $("$nginx" -v 2>&1); $(openssl version)" \
  TLS_HANDSHAKES="$(cat "$logs/handshakes.txt")" python3 - > "$logs/meta.json" <<'PY'
import json, os
e = os.environ
first = lambda f, k: next((l.split(":", 1)[1].strip() for l in open(f) if l.startswith(k)), "?")
tok = lambda s: s.replace(e["TOKEN_VALUE"], "$TOKEN").replace(e["TLS_WORK"], "$WORK")
labels = {"b-plain-h1": ("nginx, plaintext HTTP/1.1 (the same nginx, its plain listener)", "oha"),
          "d-plain-h1": ("gateway, plaintext HTTP/1.1 (the same gateway, `plaintext_listen`)", "oha"),
          "b-tls-h1": ("nginx, TLS, HTTP/1.1", "oha"), "d-tls-h1": ("gateway, TLS, HTTP/1.1", "oha"),
          "b-tls-h2": ("nginx, TLS, HTTP/2", f"h2load -m {e['TLS_STREAMS']}"),
          "d-tls-h2": ("gateway, TLS, HTTP/2", f"h2load -m {e['TLS_STREAMS']}"),
          "b-tls-hs": ("nginx, TLS, HTTP/1.1, a new connection (full handshake) per request", "oha --disable-keepalive"),
          "d-tls-hs": ("gateway, TLS, HTTP/1.1, a new connection (full handshake) per request", "oha --disable-keepalive")}
hs = [dict(zip(("target", "check", "saw"), l.split("|", 2))) for l in e["TLS_HANDSHAKES"].splitlines()]
print(json.dumps({
    "date": __import__("time").strftime("%Y-%m-%d %H:%M:%S UTC", __import__("time").gmtime()),
    "machine": f"{os.cpu_count()} CPUs ({first('/proc/cpuinfo', 'model name')}), {first('/proc/meminfo', 'MemTotal')},"
               f" Linux {open('/proc/sys/kernel/osrelease').read().strip()}",
    "commit": e["TLS_COMMIT"], "command": f"`{e['TLS_COMMAND']}`", "tools": e["TLS_TOOLS"],
    "load average at start": e["TLS_LOADAVG"], "raw logs and configs": f"`{os.path.relpath(e['TLS_LOGS'])}`",
    "certificate": e["TLS_CERTS"] + "; the same files for both",
    "TLS": f"TLS 1.3 only on both (nginx `ssl_protocols TLSv1.3`, gateway `tls.min_version: \"1.3\"`); suite **{e['TLS_SUITE']}** on both:"
           " nginx pinned with `ssl_conf_command Ciphersuites`, h2load with `--tls13-ciphers`; oha (rustls) offers it first and the"
           " gateway (rustls) takes the client's order (checks below)",
    "load": f"HTTPS with HTTP/1.1: `{tok(e['TLS_OHA'])}`; HTTPS with HTTP/2: `{tok(e['TLS_H2LOAD'])}` (PORT: nginx's or the gateway's TLS"
            f" listener; SNI and Host `localhost`); plaintext reference: `{tok(e['TLS_PLAIN'])}` (the same nginx's and gateway's plaintext"
            f" listeners); handshakes (rows `-hs`, when run): `{tok(e['TLS_HS'])}`, a new TCP connection and TLS 1.3 handshake for every request. Against each target, {e['TLS_ROUNDS']} rounds, the order rotating each round ({', '.join(e['TLS_ORDERS'].split())}),"
            f" after a {e['TLS_WARMUP']} s warm-up of each. Both servers get {e['TLS_THREADS']} worker threads (nginx `worker_processes`,"
            f" gateway `threads`) and proxy over plaintext HTTP/1.1 with keep-alive to the same echo upstream (`--threads {e['TLS_THREADS']}`)."
            " Clients keep their connections for the whole run (one handshake per connection). **The load generator runs on the same"
            " machine** as the servers and competes with them for CPU; the machine is shared with other work (the \"others\" column).",
    "cpu_note": "Server CPU is utime + stime from `/proc/PID/stat` of the server's process tree (nginx master and workers; the gateway)"
                " across each run; client CPU is oha's or h2load's own (h2load also writes a per-request log for the percentiles)."
                f" Peak RSS over all TLS rows (both protocols, one process each): nginx {e['TLS_RSS_NGINX']} MiB (master + workers),"
                f" gateway {e['TLS_RSS_GW']} MiB.",
    "targets": [{"key": k, "label": labels[k][0], "client": labels[k][1]} for k in e["TLS_KEYS"].split()],
    "handshakes": hs,
}, indent=2))
PY
}

# tls_compare [--rounds N] [--duration S] [--warmup S] [--connections C] [--streams M] [--threads T]
#             [--protos "h1 h2"] [--out DIR] [--command TEXT]: the TLS rows, then the report.
tls_compare() {
  local rounds=5 duration=8 warmup=2 connections=64 streams=10 threads=2 protos="h1 h2 plain" out=loadtest/reports
  local command="loadtest/compare.sh tls" suite=TLS_AES_256_GCM_SHA384 key r i
  while [ $# -gt 0 ]; do
    case $1 in
      --rounds) rounds=$2 ;; --duration) duration=$2 ;; --warmup) warmup=$2 ;; --connections) connections=$2 ;;
      --streams) streams=$2 ;; --threads) threads=$2 ;; --protos) protos=$2 ;; --out) out=$2 ;; --command) command=$2 ;;
      *) echo "tls_compare: unknown option $1" >&2; return 2 ;;
    esac
    shift 2
  done
  loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  logs=$PWD/target/loadtest/tls-$(date +%s)
  certs=$work/certs
  mkdir -p "$logs/raw"
  trap 'exit 143' TERM INT
  start_upstream_and_bundle "$threads"
  up_pid=${pids[-1]}
  tls_certs "$certs"
  start_nginx_tls "$up" "$certs" "$suite"
  start_gateway_tls "$certs"
  token=$("$bin/demo-token" --sub alice --role reader)
  smoke_tls "(b-tls) nginx" "$nginx_tls_port" "$nginx_plain_port" "$token" b
  smoke_tls "(d-tls) gateway" "$gw_tls_port" "$gw_plain_port" "$token" d
  tls_probe_handshakes
  keys=()
  for r in $protos; do
    case $r in plain) keys+=(b-plain-h1 d-plain-h1) ;; *) keys+=("b-tls-$r" "d-tls-$r") ;; esac
  done
  echo "tls: warm-up ${warmup}s per target" >&2
  for key in "${keys[@]}"; do tls_measure "$key" warmup "$warmup"; done
  orders=()
  for ((r = 0; r < rounds; r++)); do
    local order=()
    for ((i = 0; i < ${#keys[@]}; i++)); do order+=("${keys[$(((i + r) % ${#keys[@]}))]}"); done
    orders+=("$(IFS=/; echo "${order[*]}")")
    for key in "${order[@]}"; do tls_measure "$key" "$r" "$duration"; done
  done
  tls_meta "$command"
  tlsbench report --samples "$logs/samples.jsonl" --meta "$logs/meta.json" \
    --md "$out/compare.md" --json "$out/compare.json"
}
