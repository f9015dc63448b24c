#!/usr/bin/env bash
# The side-by-side runner, one command, on 127.0.0.1 only, bounded in time (about 8 minutes):
#   compare   (a) upstream direct, (b) nginx proxy_pass, (c) nginx + auth_request + policy service,
#             (d) the gateway: identical load, 5 alternating rounds      -> loadtest/reports/compare.{md,svg,json}
#   churn     gateway p99 with and without a new bundle every second    -> loadtest/reports/churn.{md,json}
#             (quiet, decoy and churn windows rotating, 5 rounds)
#   overload  3x the saturating rate with limits; /metrics polled       -> loadtest/reports/overload.md
# Usage: loadtest/compare.sh                 (all three)
#        loadtest/compare.sh compare --rounds 3 --duration 5 [--variant path/to/other/gateway]
#        loadtest/compare.sh --help
# Installs missing tools first (loadtest/install.sh) and builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null || ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then
  loadtest/install.sh
fi
cargo build --release -p gateway -p test-support -p fixtures -p bundlectl -p control-api
cargo build --release -p gateway --example bare_proxy
[ $# -eq 0 ] && set -- all --floor
exec timeout 1200 target/release/loadbench "$@"
