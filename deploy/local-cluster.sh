#!/usr/bin/env bash
# Starts a 3-server berth control plane on this machine (127.0.0.1:7401-7403), data under
# ${BERTH_CLUSTER_DIR:-.berth-cluster}. Server 1 bootstraps; 2 and 3 join it. Ctrl-C stops all.
#
#   deploy/local-cluster.sh
#   export BERTH_SERVER=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
#   berth cluster status
#
# With CONTAINERD=/path/to/containerd.sock it also starts two agents on it, node-1 (zone=a)
# and node-2 (zone=b), each in its own containerd namespace.
set -euo pipefail
BERTH=${BERTH:-target/debug/berth}
DIR=${BERTH_CLUSTER_DIR:-.berth-cluster}
SERVERS=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
mkdir -p "$DIR"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM

for id in 1 2 3; do
  args=(server --node-id "$id" --listen "127.0.0.1:740$id" --data-dir "$DIR/server-$id")
  # Later starts rejoin from their own state; --join only matters the first time.
  [ "$id" != 1 ] && args+=(--join 127.0.0.1:7401)
  "$BERTH" "${args[@]}" >>"$DIR/server-$id.log" 2>&1 &
  pids+=($!)
done

if [ -n "${CONTAINERD:-}" ]; then
  for n in 1 2; do
    zone=$([ "$n" = 1 ] && echo a || echo b)
    "$BERTH" agent --servers "$SERVERS" --node-name "node-$n" --containerd "$CONTAINERD" \
      --attr "zone=$zone" --listen "127.0.0.1:741$n" \
      --data-dir "$DIR/agent-$n" >>"$DIR/agent-$n.log" 2>&1 &
    pids+=($!)
  done
fi

for _ in $(seq 1 100); do
  if "$BERTH" --server "$SERVERS" cluster status >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$BERTH" --server "$SERVERS" cluster status
echo "logs in $DIR/*.log; export BERTH_SERVER=$SERVERS"
wait
