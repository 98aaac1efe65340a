#!/usr/bin/env bash
# The fault-injection suite against real chorusd processes. Options go to
# chorus-jepsen: --time SECS --nodes N --clients N --seed S
#   --nemesis kill,kill-leader,pause,crash-all   --out DIR
# Writes DIR/results.json, DIR/history.json and DIR/report.html; exits 1 if any
# guarantee was violated. Replay a run with its printed --seed.
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"
cargo build --workspace --bins --tests --locked >/dev/null
exec "$CHORUS_BIN/chorus-jepsen" "$@"
