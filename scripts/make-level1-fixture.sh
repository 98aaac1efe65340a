#!/usr/bin/env bash
# Makes node/tests/fixtures/level1-cluster.tar.gz: the data directory of a
# one-node cluster written by a chorusd from before feature levels (level 1),
# with a snapshot and log entries after it, and what that node served.
# node/tests/upgrade.rs opens it with today's binaries.
#
#   scripts/make-level1-fixture.sh BIN_DIR [OUT]
#
# BIN_DIR holds chorusd and chorusctl of such a release (the committed fixture
# was made with binaries built from commit 0272548). The node's raft address,
# 127.77.0.1:9080, is recorded in its membership: the test binds it again.
set -euo pipefail
bin=${1:?usage: make-level1-fixture.sh BIN_DIR [OUT]}
out=${2:-$(dirname "$0")/../node/tests/fixtures/level1-cluster.tar.gz}
out=$(realpath -m "$out")
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/chorusd" --id 1 --data-dir "$work/data/node-1" --raft-addr 127.77.0.1:9080 --client-addr 127.77.0.1:0 \
  --ready-file "$work/ready" --rate-limit 0 --snapshot-keep 5 \
  >/dev/null 2>"$work/log" &
echo $! >"$work/pid"
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
url=$(sed -n 's/.*"client_url":"\([^"]*\)".*/\1/p' "$work/ready")
[ -n "$url" ] || { cat "$work/log"; exit 1; }

chat() { # user room lines...
  local user=$1 room=$2; shift 2
  printf '%s\n' "$@" | "$bin/chorusctl" chat --url "$url" --user "$user" --password "fixture-password-$user" --room "$room" >/dev/null
}
# One entry per account: enough entries that the snapshot below lets the log be
# purged (chorusd purges in batches of 64), so a joining node must install it.
for i in $(seq 1 80); do
  curl -sf -X POST "$url/v1/users" -H 'content-type: application/json' \
    -d "{\"name\":\"user-$i\",\"password\":\"fixture-password-user-$i\"}" >/dev/null
done
chat ann lobby $(for i in $(seq 1 40); do echo "lobby-ann-$i"; done)
# A snapshot covers the above and compacts the log; what follows stays in the log.
"$bin/chorusctl" --node 127.77.0.1:9080 cluster snapshot >/dev/null
chat bob lobby $(for i in $(seq 1 10); do echo "lobby-bob-$i"; done) "/dm ann hello-ann-from-bob"
chat ann dev $(for i in $(seq 1 5); do echo "dev-ann-$i"; done)

token=$(curl -sf -X POST "$url/v1/sessions" -H 'content-type: application/json' \
  -d '{"name":"ann","password":"fixture-password-ann"}' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
for room in lobby dev dm:ann:bob; do
  curl -sf "$url/v1/rooms/$room/messages?limit=1000" -H "authorization: Bearer $token" >"$work/data/$room.json"
done
ls "$work/data/node-1/snapshots" | grep -q '\.snap$' || { echo "no snapshot was built" >&2; exit 1; }
# Any later command compacts a log whose purge is due; then the log must start past 1.
"$bin/chorusctl" --node 127.77.0.1:9080 --json cluster status >/dev/null

kill -TERM "$(cat "$work/pid")"
wait "$(cat "$work/pid")" 2>/dev/null || true
# The lock and RocksDB's own info log are not data.
rm -f "$work/data/node-1/db/LOCK" "$work/data/node-1/db/LOG" "$work/data/node-1/db"/LOG.old.*
mkdir -p "$(dirname "$out")"
tar -C "$work/data" -czf "$out" .
echo "wrote $out ($(du -h "$out" | cut -f1))"
