#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECS seconds each, default 60:
#   scripts/fuzz.sh [SECS] [TARGET...]
# Coverage-guided (cargo-fuzz, libFuzzer) on the nightly toolchain, which it
# installs with cargo-fuzz when missing. The corpus grows under
# $HOME/.cache/chorus-fuzz/corpus/TARGET, seeded from fuzz/seeds/TARGET; a crash
# stops the run, and its input is saved under fuzz/artifacts/TARGET: add it to
# the seeds once fixed, so every later run replays it.
source "$(dirname "$0")/env.sh"
cd "$CHORUS_ROOT/fuzz"

secs="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(client_frame server_frame http_bodies token_verify log_entry snapshot_read)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing: cargo-fuzz" >&2
  cargo +nightly install cargo-fuzz --version 0.13.2 --locked
fi

cache="$HOME/.cache/chorus-fuzz"
for t in "${targets[@]}"; do
  mkdir -p "$cache/corpus/$t" "artifacts/$t"
  echo "== fuzz $t for ${secs}s"
  # -s none: the targets are safe Rust, so AddressSanitizer would find nothing
  # that a panic does not show, at several times the cost per input.
  log="$cache/$t.log"
  if ! cargo +nightly fuzz run -s none --target-dir "$cache/target" "$t" "$cache/corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz $t FAILED: the input is in fuzz/artifacts/$t, the whole log in $log" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)' "$log"
done
