#!/usr/bin/env bash
# Counts user-space instructions per proxied request with callgrind: exact and repeatable, whatever
# else this shared machine is doing (wall-clock numbers move by up to 40% between runs here).
# Three servers, each with one worker thread, in front of the same echo upstream, on loopback:
#   bare      examples/bare_proxy.rs: Pingora's proxy with a fixed upstream and nothing else
#             (no routing, no JWT, no policy, no metrics; the gateway's allocator), the floor
#   public    the gateway, /public/x: route + trivial rule, a bearer token verified (cached)
#   orders    the gateway, /orders/7 with a reader JWT: the example bundle's orders rule
#   lean      the same with the route's `upstream_headers` off (no gateway headers added)
#   logged    the same with `access_log` to a file (the writer thread counted too)
#   decisions the same with every decision logged (`decision_logs`, sample 1.0) and shipped to a
#             sink (the echo upstream answers the POSTs; the shipper thread counted too)
#   limited   /orders/7 under a per-user rate limit it never reaches (the bucket checked)
#   badjwt    /orders/7 with a token whose signature does not verify: 401 after verification
#   refused   the same flood under a limit by client address before authentication: 429, no
#             verification
#   global    /orders/7 under a fleet-wide (`scope: global`) per-user limit it never reaches, its
#             counts exchanged with a real Redis every 200 ms (the exchanges' thread counted too)
# Each gets REQUESTS requests (oha -c 8) after 500 of warm-up; counters are zeroed in between.
# Writes loadtest/reports/instructions.md (instructions-PROFILE.md for another PROFILE).
# Usage: loadtest/instructions.sh [REQUESTS]   (default 4000; about 3 minutes; cleans up after itself)
# PROFILE=release-lto measures the binaries of that Cargo profile (default: release).
# INSTRUCTIONS_KEEP=DIR keeps each run's callgrind_annotate output (self and inclusive) and its raw
# callgrind file (LABEL.callgrind) in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-4000}
export PATH="$HOME/.cargo/bin:$PATH"
for t in valgrind callgrind_control callgrind_annotate oha; do
  command -v "$t" >/dev/null || { echo "$t missing: loadtest/install.sh" >&2; exit 1; }
done
cargo build --profile "${PROFILE:-release}" -p gateway -p test-support -p loadtest-tools --bins --example bare_proxy >&2
. loadtest/lib.sh   # bin, work, pids; all stopped and removed on exit
start_upstream_and_bundle 1
token=$("$bin/demo-token" --sub alice --role reader)

# measure LABEL URL CHECK_URL CMD...: instructions per request of CMD serving URL.
measure() {
  local label=$1 url=$2 check=$3 expect=${EXPECT:-200}; shift 3
  valgrind --tool=callgrind --callgrind-out-file="$work/cg-$label.%p" "$@" > "$work/$label.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 120); do curl -sf -o /dev/null "$check" && break; sleep 0.5; done
  oha --no-tui -n 500 -c 8 -H "authorization: Bearer $token" "$url" > /dev/null
  callgrind_control -z "$pid" > /dev/null
  oha --no-tui -n "$N" -c 8 -H "authorization: Bearer $token" --output-format json "$url" > "$work/$label.json"
  callgrind_control -d "$pid" > /dev/null
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true   # SIGINT: Pingora's fast shutdown
  local ok
  ok=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['statusCodeDistribution'].get(sys.argv[2], 0))" "$work/$label.json" "$expect")
  [ "$ok" = "$N" ] || { echo "$label: only $ok of $N requests answered $expect" >&2; exit 1; }
  local f
  f=$(ls "$work"/cg-"$label".*.1 | head -1)
  callgrind_annotate --auto=no "$f" > "$work/$label.txt" 2>/dev/null
  callgrind_annotate --auto=no --inclusive=yes "$f" > "$work/$label.incl.txt" 2>/dev/null
  if [ -n "${INSTRUCTIONS_KEEP:-}" ]; then mkdir -p "$INSTRUCTIONS_KEEP"; cp "$work/$label.txt" "$work/$label.incl.txt" "$INSTRUCTIONS_KEEP/"; cp "$f" "$INSTRUCTIONS_KEEP/$label.callgrind"; fi
  local total
  total=$(grep "PROGRAM TOTALS" "$work/$label.txt" | awk '{gsub(",","",$1); print $1}')
  echo "$label $((total / N))" >> "$work/results"
  echo "$label: $((total / N)) instructions per request" >&2
}

# nginx, one process (no master) with one worker's work, the proxy.conf.tmpl of the side-by-side
# runner: the same proxy_pass and forwarding headers.
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
np=$(free_port)
mkdir -p "$work/nginx/tmp"/{body,proxy,fastcgi,uwsgi,scgi}
conf=$(< loadtest/nginx/proxy.conf.tmpl)
conf=${conf//'{{DIR}}'/$work/nginx}
conf=${conf//'{{LISTEN}}'/127.0.0.1:$np}
conf=${conf//'{{UPSTREAM}}'/$up}
printf '%s\n' "${conf/worker_processes 2;/worker_processes 1;}" > "$work/nginx/nginx.conf"
measure nginx "http://127.0.0.1:$np/orders/7" "http://127.0.0.1:$np/orders/7" \
  "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" -g 'daemon off; master_process off; user root;'
bp=$(free_port)
measure bare "http://127.0.0.1:$bp/orders/7" "http://127.0.0.1:$bp/orders/7" \
  "$bin/examples/bare_proxy" "127.0.0.1:$bp" "$up" 1
one_thread_gateway_config
export GATEWAY_LOG=warn
measure public "http://127.0.0.1:$port/public/x" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/gateway.yaml"
measure orders "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/gateway.yaml"
# The same route with `upstream_headers` off: none of the gateway's forwarding, request-id and
# trace headers added, as bare Pingora adds none.
cp -r "$work/bundle" "$work/lean"
sed -i "s|    policy: data.http.orders.decision|    policy: data.http.orders.decision\n    upstream_headers: { forwarding: false, request_id: false, traceparent: false }|" "$work/lean/gateway/data.yaml"
sed "s|file: $work/bundle\$|file: $work/lean|" "$work/gateway.yaml" > "$work/lean.yaml"
measure lean "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/lean.yaml"
sed "s|^threads: 1|threads: 1\naccess_log: { path: $work/access.log }|" "$work/gateway.yaml" > "$work/logged.yaml"
measure logged "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/logged.yaml"
sed "s|^threads: 1|threads: 1\ndecision_logs: { sinks: [\"http://$up/v1/logs\"], sample: 1.0 }|" "$work/gateway.yaml" > "$work/decisions.yaml"
measure decisions "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/decisions.yaml"

# Rate limits: the same bundle with a per-user limit on orders that is never reached, and with
# a limit by client address before authentication that refuses all but the first request.
limited_bundle() {
  cp -r "$work/bundle" "$1"
  # A global limit only where it is measured: a gateway without a quota store refuses the bundle.
  local fleet=""
  [ "$2" = fleet ] && fleet="\n  fleet: { key: jwt.sub, rate: 1000000/s, scope: global }"
  sed -i -e "s|^routes:|rate_limits:\n  per_user: { key: jwt.sub, rate: 1000000/s }\n  per_ip: { key: client_ip, rate: 1/h, burst: 1, before_auth: true }$fleet\nroutes:|" \
    -e "s|    policy: data.http.orders.decision|    policy: data.http.orders.decision\n    rate_limits: [$2]|" "$1/gateway/data.yaml"
  sed "s|file: $work/bundle\$|file: $1|" "$work/gateway.yaml" > "$1.yaml"
}
limited_bundle "$work/limited" per_user
measure limited "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/limited.yaml"
# A token whose signature does not verify (a character of its signature changed).
good_token=$token
flip=$([ "${good_token: -10:1}" = A ] && echo B || echo A)
token="${good_token:0:${#good_token}-10}$flip${good_token: -9}"
EXPECT=401 measure badjwt "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/gateway.yaml"
limited_bundle "$work/refused" per_ip
EXPECT=429 measure refused "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/refused.yaml"
token=$good_token
rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning > "$work/redis.log" 2>&1 &
pids+=($!)
limited_bundle "$work/global" fleet
sed -i "s|^threads: 1|threads: 1\nquota_store: { url: \"redis://127.0.0.1:$rp\" }|" "$work/global.yaml"
measure global "http://127.0.0.1:$port/orders/7" "http://127.0.0.1:$admin/readyz" "$bin/gateway" --config "$work/global.yaml"
# The exchanges' share (their background task, inclusive): a fixed cost per 200 ms, spread here over
# the requests callgrind let through in that time.
callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$(ls "$work"/cg-global.*.1 | head -1)" > "$work/global.all.txt" 2>/dev/null || true
exchanges=$(grep -E "quota::Exchanges as pingora_core::services::background::BackgroundService>::start::\{\{closure\}\} \[" "$work/global.all.txt" \
  | head -1 | awk -v n="$N" '{gsub(",","",$1); print int($1/n)}' || true)
exchanges=${exchanges:-0}

report=loadtest/reports/instructions.md
[ "${PROFILE:-release}" = release ] || report=loadtest/reports/instructions-$PROFILE.md
get() { awk -v l="$1" '$1 == l { print $2 }' "$work/results"; }
# The decision-log shipper's thread, inclusive (the thread's entry, in gateway/src/decision_log/).
# (An optimized build may inline it away: then the shipper's share is not split out, shown as 0.)
shipper=$(grep -m1 -E "decision_log/mod.rs:(std::sys::backtrace::__rust_begin_short_backtrace|gateway::decision_log::Shipper::run)" \
  "$work/decisions.incl.txt" | awk -v n="$N" '{gsub(",","",$1); print int($1/n)}' || true)
shipper=${shipper:-0}
nginx=$(get nginx); bare=$(get bare); public=$(get public); orders=$(get orders); lean=$(get lean); logged=$(get logged); decisions=$(get decisions)
limited=$(get limited); badjwt=$(get badjwt); refused=$(get refused); global=$(get global)
# Inclusive instructions per request of the gateway's own phases, from the orders run.
phases=$(grep -E "gateway::proxy::Proxy as pingora_proxy::proxy_trait::ProxyHttp>::[a-z_]+::\{\{closure\}\} \[|policy_bundles::(input::build|input::headers|snapshot::Snapshot::decide_cached|jwt::TrustRoots::verify_cached|router::RouteTable::lookup) \[" "$work/orders.incl.txt" \
  | awk -v n="$N" '{gsub(",","",$1); name=$0; sub(/.*(ProxyHttp>::|policy_bundles::)/,"",name); sub(/ \[.*/,"",name); sub(/::\{\{closure\}\}/,"",name); printf "| `%s` | %d |\n", name, $1/n}' || true)
{
  echo "# Instructions per request (callgrind)"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo "| commit | $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway policy-bundles || echo ' with uncommitted changes') |"
  echo "| command | \`$([ "${PROFILE:-release}" = release ] || echo "PROFILE=$PROFILE ")loadtest/instructions.sh $N\` |"
  echo "| tools | $(valgrind --version), $(oha --version) |"
  echo
  echo "User-space instructions executed by the server process per request (callgrind, \`Ir\`), one worker"
  echo "thread, $N requests by \`oha -c 8\` after 500 of warm-up, echo upstream on loopback. Exact and"
  echo "repeatable; kernel work (the loopback sends and receives, the same for every proxy) is not counted."
  echo
  echo "| server | instructions / request | vs bare Pingora |"
  echo "|---|---|---|"
  echo "| nginx \`proxy_pass\` (\`loadtest/nginx/proxy.conf.tmpl\`, one process) | $nginx | $(python3 -c "print(f'{$nginx/$bare:.2f}')") |"
  echo "| bare Pingora proxy (\`gateway/examples/bare_proxy.rs\`) | $bare | 1.00 |"
  echo "| gateway, \`/public/x\` (route, cached JWT, trivial rule) | $public | $(python3 -c "print(f'{$public/$bare:.2f}')") |"
  echo "| gateway, \`/orders/7\` (route, cached JWT, orders rule) | $orders | $(python3 -c "print(f'{$orders/$bare:.2f}')") |"
  echo "| gateway, \`/orders/7\`, \`upstream_headers\` off (no forwarding, request-id or trace headers, as bare Pingora) | $lean | $(python3 -c "print(f'{$lean/$bare:.2f}')") |"
  echo "| gateway, \`/orders/7\`, access log on (writer thread included) | $logged | $(python3 -c "print(f'{$logged/$bare:.2f}')") |"
  echo "| gateway, \`/orders/7\`, every decision logged and shipped (shipper thread included) | $decisions | $(python3 -c "print(f'{$decisions/$bare:.2f}')") |"
  echo
  echo "The access log costs $((logged - orders)) instructions per request ($(python3 -c "print(f'{($logged-$orders)/$orders*100:.1f}')")% of the orders request)."
  echo "Logging every decision costs $((decisions - orders)) instructions per request ($(python3 -c "print(f'{($decisions-$orders)/$orders*100:.1f}')")% of the orders request):"
  echo "$((decisions - shipper - orders)) on the request path ($(python3 -c "print(f'{($decisions-$shipper-$orders)/$orders*100:.1f}')")%: the decision id, the request's parts taken, \`x-decision-id\` to the"
  echo "upstream, the queue) and $shipper on the shipper's thread (the event written, gzip, the POSTs)."
  echo
  echo "Rate limits: \`/orders/7\` under a per-user limit it never reaches costs $limited instructions per"
  echo "request, $((limited - orders)) more than without the limit. A flood of tokens that do not verify costs"
  echo "$badjwt per request (401, after verification); under a limit by client address before"
  echo "authentication the same flood costs $refused per request (429, nothing verified). Under a fleet-wide"
  echo "(\`scope: global\`) per-user limit it never reaches, with counts exchanged with Redis every 200 ms,"
  echo "it costs $global per request, $((global - orders)) more than without a limit: $((global - orders - exchanges)) on the request path and"
  echo "$exchanges for the exchanges (a fixed cost every 200 ms, whatever the load, spread here over the few"
  echo "requests a second that callgrind lets through)."
  echo
  echo "The gateway's own phases in the orders run (inclusive instructions per request):"
  echo
  echo "| phase | instructions / request |"
  echo "|---|---|"
  echo "$phases"
} > "$report"
cat "$report"
