#!/usr/bin/env bash
# The fault-injection suite against real chorusd processes. Options go to
# chorus-jepsen: --time SECS --nodes N --clients N --seed S --out DIR
#   --nemesis all|process|network|kill,kill-leader,pause,crash-all,partition-leader,
#             partition-half,partition-bridge,partition-oneway,loss,slow,membership,clock-skew
#   --combine P (probability a step runs two faults together)
#   --net auto|namespaces|proxy (namespaces need root; auto picks them when possible)
# Writes DIR/results.json, DIR/history.json and DIR/report.html; exits 1 if any
# guarantee was violated. Replay a run with its printed --seed.
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"
fault_tools
cargo build --workspace --bins --tests --locked >/dev/null
exec "$CHORUS_BIN/chorus-jepsen" "$@"
