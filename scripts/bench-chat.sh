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
for i in 1 2 3; do
  "$CHORUS_BIN/chorusd" --id "$i" --data-dir "$tmp/n$i" --client-addr "127.0.0.1:$((18079 + i))" \
    --raft-addr "127.0.0.1:$((19079 + i))" --no-bootstrap --rate-limit 0 --log-file "$tmp/n$i.log" &
  pids+=($!); urls+=("http://127.0.0.1:$((18079 + i))"); addrs+=("127.0.0.1:$((19079 + i))")
done
for a in "${addrs[@]}"; do
  for _ in $(seq 1 100); do "$CHORUS_BIN/chorusctl" --node "$a" cluster status >/dev/null 2>&1 && break; sleep 0.1; done
done
"$CHORUS_BIN/chorusctl" cluster init "${addrs[@]}" >/dev/null
IFS=,; "$CHORUS_BIN/chorusctl" bench --urls "${urls[*]}" --pids "${pids[*]}" "$@"
