#!/usr/bin/env bash
# Starts a 3-server berth control plane on this machine (127.0.0.1:7401-7403), data under
# ${BERTH_CLUSTER_DIR:-.berth-cluster}. Server 1 bootstraps the cluster (its CA and first admin
# credentials, $DIR/server-1/admin.toml); 2 and 3 join it with a server join token. Ctrl-C stops
# all.
#
#   deploy/local-cluster.sh
#   export BERTH_CREDENTIALS=.berth-cluster/server-1/admin.toml
#   berth cluster status
#
# With CONTAINERD=/path/to/containerd.sock it also starts two agents on it, node-1 (zone=a)
# and node-2 (zone=b), each in its own containerd namespace, joined with an agent join token.
set -euo pipefail
BERTH=${BERTH:-target/debug/berth}
DIR=${BERTH_CLUSTER_DIR:-.berth-cluster}
SERVERS=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
CREDENTIALS="$DIR/server-1/admin.toml"
mkdir -p "$DIR"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM

berth() { "$BERTH" --credentials "$CREDENTIALS" --server "$SERVERS" "$@"; }

wait_for() { # wait_for DESCRIPTION COMMAND...
  local what=$1; shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $what; see $DIR/*.log" >&2
  exit 1
}

"$BERTH" server --node-id 1 --listen 127.0.0.1:7401 --data-dir "$DIR/server-1" \
  >>"$DIR/server-1.log" 2>&1 &
pids+=($!)
wait_for "server 1's admin credentials" test -f "$CREDENTIALS"
wait_for "server 1" berth cluster status

for id in 2 3; do
  args=(server --node-id "$id" --listen "127.0.0.1:740$id" --data-dir "$DIR/server-$id")
  # Later starts rejoin from their own state (and certificate); the token is for the first.
  if [ ! -d "$DIR/server-$id/tls" ]; then
    token=$(berth cluster token create --role server --ttl 10m | tail -n 1)
    args+=(--join 127.0.0.1:7401 --join-token "$token")
  fi
  "$BERTH" "${args[@]}" >>"$DIR/server-$id.log" 2>&1 &
  pids+=($!)
done

if [ -n "${CONTAINERD:-}" ]; then
  for n in 1 2; do
    zone=$([ "$n" = 1 ] && echo a || echo b)
    args=(agent --servers "$SERVERS" --node-name "node-$n" --containerd "$CONTAINERD"
      --attr "zone=$zone" --listen "127.0.0.1:741$n" --data-dir "$DIR/agent-$n")
    if [ ! -d "$DIR/agent-$n/tls" ]; then
      args+=(--join-token "$(berth cluster token create --role agent --ttl 10m | tail -n 1)")
    fi
    "$BERTH" "${args[@]}" >>"$DIR/agent-$n.log" 2>&1 &
    pids+=($!)
  done
fi

wait_for "the cluster" berth cluster status
berth cluster status
echo "logs in $DIR/*.log; export BERTH_CREDENTIALS=$CREDENTIALS BERTH_SERVER=$SERVERS"
wait
