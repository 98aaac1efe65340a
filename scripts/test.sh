#!/usr/bin/env bash
# Runs every test of Chorus: unit, property, openraft's storage suite, in-process
# clusters, and the process-level tests with real chorusd/chorusctl binaries.
# Installs what a fresh machine is missing first.
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT"

echo "== build (one dev profile for tests and binaries; target: $CARGO_TARGET_DIR)"
cargo build --workspace --bins --tests --locked

echo "== tests"
# Integration tests start whole clusters; two at a time keeps a 2-core machine
# from starving Raft heartbeats.
cargo test --workspace --locked -- --test-threads=2
