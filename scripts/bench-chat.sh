#!/usr/bin/env bash
# Starts a local three-node cluster with rate limiting off, runs `chorusctl bench`
# against it, and stops it. Extra arguments go to `chorusctl bench`, e.g.
#   scripts/bench-chat.sh --senders 256 --subscribers 3000 --idle 10000
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"
cargo build --workspace --bins --tests --locked >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
tmp="$(mktemp -d)"
pids=()
trap 'kill ${pids[*]} 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
urls=(); addrs=()
# Port 0: the OS picks each node's ports and the node reports them in its ready
# file, so this never collides with another cluster on the machine.
for i in 1 2 3; do
  "$CHORUS_BIN/chorusd" --id "$i" --data-dir "$tmp/n$i" --client-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0 \
    --ready-file "$tmp/n$i.ready" --no-bootstrap --rate-limit 0 --log-file "$tmp/n$i.log" >/dev/null &
  pids+=($!)
done
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$2"; }
for i in 1 2 3; do
  for _ in $(seq 1 300); do [ -s "$tmp/n$i.ready" ] && break; sleep 0.1; done
  [ -s "$tmp/n$i.ready" ] || { echo "node $i did not start; its log:" >&2; cat "$tmp/n$i.log" >&2; exit 1; }
  urls+=("$(field client_url "$tmp/n$i.ready")"); addrs+=("$(field raft_addr "$tmp/n$i.ready")")
done
"$CHORUS_BIN/chorusctl" cluster init "${addrs[@]}" >/dev/null
IFS=,; "$CHORUS_BIN/chorusctl" bench --urls "${urls[*]}" --pids "${pids[*]}" "$@"
