#!/usr/bin/env bash
# Runs every test of Chorus: unit, property, openraft's storage suite, in-process
# clusters, process-level tests with real chorusd/chorusctl binaries, and the web
# page in headless Chromium. Installs what a fresh machine is missing first.
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"

echo "== build (one dev profile for tests and binaries; target: $CARGO_TARGET_DIR)"
cargo build --workspace --bins --tests --locked

echo "== cargo tests"
# Integration tests start whole clusters; two at a time keeps a 2-core machine
# from starving Raft heartbeats.
cargo test --workspace --locked -- --test-threads=2

echo "== the chat suite again, every node on TLS (raft: mutual TLS; clients: HTTPS and WSS)"
CHORUS_TEST_TLS=1 cargo test -p node --test chat --locked -- --test-threads=2

echo "== fault injection, short profile (every nemesis; replay a run with its printed seed)"
# As root the nodes run in network namespaces (iptables faults); the last
# schedule forces the TCP-proxy layout that non-root runs fall back to.
fault_tools
results="$CHORUS_ROOT/jepsen-like-tests/results"
"$CHORUS_BIN/chorus-jepsen" --time 30 --nemesis process --out "$results/process"
"$CHORUS_BIN/chorus-jepsen" --time 30 --nemesis network --out "$results/network"
"$CHORUS_BIN/chorus-jepsen" --time 30 --nemesis membership,clock-skew,kill-leader,partition-leader --combine 0.5 --out "$results/membership-clock"
"$CHORUS_BIN/chorus-jepsen" --time 30 --nemesis all --net proxy --out "$results/proxy"

echo "== fuzz targets, 20 s each (scripts/fuzz.sh; longer runs: scripts/fuzz.sh SECS)"
bash scripts/fuzz.sh 20

echo "== Prometheus alert rules and their unit tests (Debian's promtool)"
if ! command -v promtool >/dev/null; then
  echo "installing: prometheus (for promtool)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' deploy/grafana/chorus-dashboard.json

echo "== web page in headless Chromium (Debian's chromium, playwright-core from npm)"
# The emoji font, so reactions and the lock show in the screenshots.
if [ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-noto-color-emoji >/dev/null 2>&1; then
  echo "installing: chromium fonts-noto-color-emoji" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
(cd e2e && npm ci --no-audit --no-fund --silent)
CHORUS_BIN="$CHORUS_BIN" node e2e/web.test.mjs
