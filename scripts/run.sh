#!/usr/bin/env bash
# Builds Chorus and runs a local three-node cluster formed with chorusctl, with
# certificates from `chorusctl certs init`: raft ports on mutual TLS, client
# ports on HTTPS and WSS (certs/https.crt, signed by certs/ca.crt; a browser
# must be told to trust ca.crt, or run with CHORUS_CLIENT_TLS=0 for plain HTTP
# on loopback). Ctrl-C stops every node. Data and certificates live in
# ./chorus-data (kept between runs).
#   CHORUS_NODES=3 scripts/run.sh
# Also read: CHORUS_DATA (the data directory), CHORUS_CLIENT_PORT_BASE and
# CHORUS_RAFT_PORT_BASE (node i listens on base+i; 8079 and 9079), and
# CHORUS_NO_BUILD=1 (use the binaries in $CHORUS_BIN as they are).
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"

# Same flags as scripts/test.sh: one feature set, so RocksDB is built once for both.
[ "${CHORUS_NO_BUILD:-0}" = 1 ] || cargo build --workspace --bins --tests --locked
n="${CHORUS_NODES:-3}"
data="${CHORUS_DATA:-$CHORUS_ROOT/chorus-data}"
client_base="${CHORUS_CLIENT_PORT_BASE:-8079}"
raft_base="${CHORUS_RAFT_PORT_BASE:-9079}"
client_tls="${CHORUS_CLIENT_TLS:-1}"
mkdir -p "$data"
certs="$data/certs"
if [ ! -f "$certs/ca.key" ]; then
  "$CHORUS_BIN/chorusctl" certs init "$certs" --nodes "$n" >/dev/null
elif [ ! -f "$certs/node-$n.crt" ]; then
  for i in $(seq 1 "$n"); do [ -f "$certs/node-$i.crt" ] || "$CHORUS_BIN/chorusctl" certs node "$certs" --id "$i" >/dev/null; done
fi
# Data from before the client port had TLS has no https.crt yet.
[ -f "$certs/https.crt" ] || "$CHORUS_BIN/chorusctl" certs https "$certs" >/dev/null
scheme=http
tls_flags=()
if [ "$client_tls" = 1 ]; then
  scheme=https
  tls_flags=(--client-tls-cert "$certs/https.crt" --client-tls-key "$certs/https.key")
fi
# chorusctl reads its operator credentials from these.
export CHORUS_CA="$certs/ca.crt" CHORUS_CERT="$certs/operator.crt" CHORUS_KEY="$certs/operator.key"
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
  client="127.0.0.1:$((client_base + i))"; raft="127.0.0.1:$((raft_base + i))"
  rm -f "$data/node-$i.ready"
  "$CHORUS_BIN/chorusd" --id "$i" --data-dir "$data/node-$i" --client-addr "$client" --raft-addr "$raft" \
    --no-bootstrap --ready-file "$data/node-$i.ready" --log-file "$data/node-$i.log" \
    --tls-cert "$certs/node-$i.crt" --tls-key "$certs/node-$i.key" --tls-ca "$certs/ca.crt" "${tls_flags[@]}" >/dev/null &
  pids+=($!)
  addrs+=("$raft")
  echo "node $i: chat $scheme://$client/   raft $raft   log $data/node-$i.log"
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
echo "chorusctl as the operator: export CHORUS_CA=$CHORUS_CA CHORUS_CERT=$CHORUS_CERT CHORUS_KEY=$CHORUS_KEY"
[ "$client_tls" = 1 ] && echo "chat clients trust $certs/ca.crt: chorusctl --ca $certs/ca.crt chat --url https://127.0.0.1:$((client_base + 1)) --user NAME"
echo "Ctrl-C stops the cluster."
wait
