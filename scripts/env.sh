# Shared by the scripts: installs what a fresh machine lacks and points cargo at
# one target directory outside the clone, so every run reuses the RocksDB build.
# Sourced, not run.

set -euo pipefail

CHORUS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chorus-target}"
export CHORUS_BIN="$CARGO_TARGET_DIR/debug"

need_apt=()
# librocksdb-sys runs bindgen, which needs libclang; the C++ build needs g++.
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
apt_install() {
  echo "installing: $*" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
[ "${#need_apt[@]}" -eq 0 ] || apt_install "${need_apt[@]}"

# The fault-injection suite: iptables for partitions and loss inside network
# namespaces, libfaketime for the clock-skew nemesis.
fault_tools() {
  local need=()
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  dpkg -s libfaketime >/dev/null 2>&1 || need+=(faketime)
  [ "${#need[@]}" -eq 0 ] || apt_install "${need[@]}"
}
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
