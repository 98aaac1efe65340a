#!/usr/bin/env bash
# A rolling upgrade with real binaries of two releases, step by step:
#   1. a cluster of an OLD node and a NEW node, formed at the old level;
#   2. writes through either leader reach both (the new binary writes what the
#      old one reads);
#   3. `cluster upgrade` is refused while the old binary is a member;
#   4. the old node restarts on the new binary, and the upgrade goes through;
#   5. a node on the old binary can no longer join.
#
#   scripts/check-rolling-upgrade.sh OLD_BIN_DIR [NEW_BIN_DIR]
#
# OLD_BIN_DIR holds chorusd of a release from before feature levels (built from
# commit 0272548, say); NEW_BIN_DIR defaults to this checkout's build. Loopback
# only, port 0 everywhere; exits non-zero at the first step that fails.
set -euo pipefail
source "$(dirname "$0")/env.sh"
old=${1:?usage: check-rolling-upgrade.sh OLD_BIN_DIR [NEW_BIN_DIR]}
new=${2:-$CHORUS_BIN}
work=$(mktemp -d)
cleanup() { pkill -f "data-dir $work" || true; sleep 0.5; rm -rf "$work" || true; }
trap cleanup EXIT
ctl() { "$new/chorusctl" --timeout 20 "$@"; }
field() { sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p" "$work/ready-$1"; }
start() { # BIN ID [RAFT_ADDR]
  rm -f "$work/ready-$2"
  "$1/chorusd" --id "$2" --data-dir "$work/node-$2" --raft-addr "${3:-127.0.0.1:0}" --client-addr 127.0.0.1:0 \
    --ready-file "$work/ready-$2" --no-bootstrap --rate-limit 0 >/dev/null 2>>"$work/node-$2.log" &
  for _ in $(seq 100); do [ -s "$work/ready-$2" ] && return; sleep 0.1; done
  echo "node $2 did not start: $(tail -3 "$work/node-$2.log")" >&2; exit 1
}
send() { # NODE TEXT...
  local url; url=$(field "$1" client_url); shift
  printf '%s\n' "$@" | "$new/chorusctl" chat --url "$url" --user ann --password rolling-upgrade --room r >/dev/null 2>&1
}
texts() { # NODE
  local url token; url=$(field "$1" client_url)
  token=$(curl -sf -X POST "$url/v1/sessions" -H 'content-type: application/json' \
    -d '{"name":"ann","password":"rolling-upgrade"}' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  curl -sf "$url/v1/rooms/r/messages?consistency=local" -H "authorization: Bearer $token" | grep -o '"text":"[^"]*"' | sort | tr '\n' ' '
}
step() { echo "== $*"; }

step "1. an old node (1) and a new node (2), formed by the old one"
start "$old" 1; start "$new" 2
raft1=$(field 1 raft_addr); raft2=$(field 2 raft_addr)
ctl cluster init "$raft1" "$raft2" >/dev/null
sleep 1
ctl --node "$raft2" cluster status

step "2. writes under the old leader, then under the new one, reach both"
send 2 one two
ctl --node "$raft1" cluster transfer-leader 2 >/dev/null
send 1 three four
for n in 1 2; do
  for _ in $(seq 50); do [ "$(texts $n | wc -w)" = 4 ] && break; sleep 0.1; done
  echo "node $n: $(texts $n)"; [ "$(texts $n | wc -w)" = 4 ]
done

step "3. no upgrade while the old binary is a member"
if ctl --node "$raft2" cluster upgrade --level 2; then echo "upgrade was not refused" >&2; exit 1; fi

step "4. node 1 restarts on the new binary; the upgrade goes through"
pkill -f "data-dir $work/node-1" ; sleep 1
start "$new" 1 "$raft1"
sleep 1
ctl --node "$raft1" cluster upgrade | tee "$work/upgrade"
grep -q "to 2" "$work/upgrade"
send 1 five
for n in 1 2; do
  for _ in $(seq 50); do [ "$(texts $n | wc -w)" = 5 ] && break; sleep 0.1; done
  echo "node $n: $(texts $n)"; [ "$(texts $n | wc -w)" = 5 ]
done

step "5. an old binary cannot join the upgraded cluster"
start "$old" 3
if ctl --node "$raft1" cluster add "$(field 3 raft_addr)"; then echo "the old node was admitted" >&2; exit 1; fi
echo "rolling upgrade: ok"
