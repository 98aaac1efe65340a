#!/usr/bin/env bash
# Builds Chorus and runs a local three-node cluster formed with chorusctl.
# Ctrl-C stops every node. Data lives in ./chorus-data (kept between runs).
#   CHORUS_NODES=3 scripts/run.sh
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"

# Same flags as scripts/test.sh: one feature set, so RocksDB is built once for both.
cargo build --workspace --bins --tests --locked
n="${CHORUS_NODES:-3}"
data="${CHORUS_DATA:-$CHORUS_ROOT/chorus-data}"
mkdir -p "$data"
pids=()
stopped=0
stop() {
  # Runs on Ctrl-C and again on exit; stop the nodes once.
  [ "$stopped" = 1 ] && return
  stopped=1
  echo; echo "stopping nodes..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

# Fixed ports, not port 0: the cluster's membership records each node's raft
# address, and a second run restarts the same cluster from ./chorus-data.
addrs=()
for i in $(seq 1 "$n"); do
  client="127.0.0.1:$((8079 + i))"; raft="127.0.0.1:$((9079 + i))"
  rm -f "$data/node-$i.ready"
  "$CHORUS_BIN/chorusd" --id "$i" --data-dir "$data/node-$i" --client-addr "$client" --raft-addr "$raft" \
    --no-bootstrap --ready-file "$data/node-$i.ready" --log-file "$data/node-$i.log" >/dev/null &
  pids+=($!)
  addrs+=("$raft")
  echo "node $i: chat http://$client/   raft $raft   log $data/node-$i.log"
done

# Wait for every node to serve (its ready file), then form the cluster (first run only).
for i in $(seq 1 "$n"); do
  for _ in $(seq 1 300); do [ -s "$data/node-$i.ready" ] && break; sleep 0.1; done
  [ -s "$data/node-$i.ready" ] || { echo "node $i did not start; see $data/node-$i.log" >&2; exit 1; }
done
if "$CHORUS_BIN/chorusctl" --node "${addrs[0]}" --json cluster status | grep -q '"members":\[\]'; then
  "$CHORUS_BIN/chorusctl" cluster init "${addrs[@]}" >/dev/null
fi
"$CHORUS_BIN/chorusctl" --node "${addrs[0]}" cluster status
echo "Ctrl-C stops the cluster."
wait
