#!/usr/bin/env bash
# The side-by-side runner, one command, on 127.0.0.1 only, bounded in time (about 20 minutes):
#   compare   (a) upstream direct, (b) nginx proxy_pass, (c) nginx + auth_request + policy service,
#             (n) the same with the policy service one hop away (latency-relay, --hop-us 250),
#             (d) the gateway: identical load, 5 alternating rounds      -> loadtest/reports/compare.{md,svg,json}
#             --floor adds (p), a bare Pingora proxy; --variant BIN adds (e)
#             --tls adds the HTTPS rows, after the others: nginx and the gateway terminating TLS 1.3
#             with the same certificate and suite, (b-tls-h1) (d-tls-h1) with oha over HTTP/1.1,
#             (b-tls-h2) (d-tls-h2) with h2load over HTTP/2 (--streams per connection, default 10),
#             and (b-plain-h1) (d-plain-h1), the same two processes' plaintext listeners, for what TLS
#             costs each; --tls=h1,h2 (any of h1, h2, plain, and hs: (b-tls-hs) (d-tls-hs), a new
#             connection and full handshake per request, not in the default) picks rows -> a section of compare.md,
#                                                                            rows in compare.json
#   tls       the HTTPS rows alone (same options: --rounds --duration --warmup --connections --streams)
#   churn     gateway p99 with and without a new bundle every second    -> loadtest/reports/churn.{md,json}
#             (quiet, decoy and churn windows rotating, 5 rounds)
#   overload  3x the saturating rate with limits; /metrics polled       -> loadtest/reports/overload.md
# Usage: loadtest/compare.sh                 (all three, with --floor and --tls)
#        loadtest/compare.sh compare --rounds 3 --duration 5 [--variant path/to/other/gateway] [--tls]
#        loadtest/compare.sh tls --rounds 3 --duration 5 [--tls=h2] [--streams 10]
#        loadtest/compare.sh --help
# Installs missing tools first (loadtest/install.sh) and builds the release binaries; the HTTPS rows
# alone take BIN_DIR=DIR instead (the binaries of another build, scripts/build-release --pgo's
# target/pgo/release-lto say), without building.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
[ $# -eq 0 ] && set -- all --floor --tls
command="loadtest/compare.sh $*"
if [ "$1" = --help ] || [ "$1" = -h ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  echo
fi

# The options of the TLS rows; those the rows share with `loadbench compare` go to both.
mode=$1 tls="" lb=() tls_opts=()
[ "$mode" = tls ] && { tls="h1 h2 plain"; shift; }
while [ $# -gt 0 ]; do
  case $1 in
    --tls) tls="h1 h2 plain" ;;
    --tls=*) tls=${1#--tls=}; tls=${tls//,/ } ;;
    --streams) tls_opts+=(--streams "$2"); shift ;;
    --streams=*) tls_opts+=(--streams "${1#*=}") ;;
    --rounds | --duration | --warmup | --connections | --threads) tls_opts+=("$1" "$2"); lb+=("$1" "$2"); shift ;;
    --rounds=* | --duration=* | --warmup=* | --connections=* | --threads=*) tls_opts+=("${1%%=*}" "${1#*=}"); lb+=("$1") ;;
    *) lb+=("$1") ;;
  esac
  shift
done
for p in $tls; do
  case $p in h1 | h2 | plain | hs) ;; *) echo "--tls takes a list of h1, h2, plain, hs (got $p)" >&2; exit 2 ;; esac
done

need_install=false
command -v oha > /dev/null || need_install=true
command -v nginx > /dev/null || [ -x /usr/sbin/nginx ] || need_install=true
[ -z "$tls" ] || command -v h2load > /dev/null || need_install=true
if $need_install; then loadtest/install.sh; fi

if [ "$mode" != tls ]; then
  cargo build --release -p gateway -p test-support -p loadtest-tools -p bundlectl -p control-api
  cargo build --release -p gateway --example bare_proxy
  timeout 1200 target/release/loadbench "${lb[@]}"
elif [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p gateway -p test-support
fi
[ -n "$tls" ] || exit 0

# The TLS rows: bounded by their own deadline (start-up, warm-up and every run, with slack).
# opt NAME DEFAULT: the last value given for NAME, else DEFAULT.
opt() {
  local v=$2 i
  for ((i = 0; i < ${#tls_opts[@]}; i += 2)); do
    if [ "${tls_opts[i]}" = "$1" ]; then v=${tls_opts[i + 1]}; fi
  done
  echo "$v"
}
rounds=$(opt --rounds 5) duration=$(opt --duration 8) warmup=$(opt --warmup 2)
rows=$(($(wc -w <<< "$tls") * 2))
limit=$(awk -v r="$rounds" -v d="$duration" -v w="$warmup" -v n="$rows" 'BEGIN{printf "%d", 90 + n * (w + 3) + r * n * (d + 4)}')
timeout -k 10 "$limit" bash -c '. loadtest/lib.sh && tls_compare "$@"' tls_compare \
  "${tls_opts[@]}" --protos "$tls" --command "$command"
