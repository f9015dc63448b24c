# Shared by profile.sh and instructions.sh (sourced from the repository root, not run): the
# release binaries in `bin`, a scratch directory `work`, and `pids`, an array of processes that
# are killed, with `work` removed, when the script exits.
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

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
