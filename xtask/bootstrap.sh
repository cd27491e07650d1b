#!/bin/sh
# blastgate's one entry point on a fresh Debian or Ubuntu machine (as root):
#
#   ./xtask/bootstrap.sh demo    # set up, build, run the interception demo
#   ./xtask/bootstrap.sh test    # set up, build, run the whole test suite
#   ./xtask/bootstrap.sh bench   # set up, build, run the benchmarks
#
# It installs only what is missing: a C toolchain and curl (apt), Rust 1.95
# (rustup) if there is no cargo, then hands over to `cargo xtask <task>`,
# whose `setup` step installs the rest (BPF toolchain, bpf-linker, servers
# and clients used by the demo and tests). Safe to re-run.
set -eu

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: run as root (it installs packages and loads eBPF programs)" >&2
    exit 1
fi

missing=""
for pkg in build-essential curl ca-certificates pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
    echo "bootstrap: installing Rust 1.95 with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
        --default-toolchain 1.95.0 -c clippy -c rustfmt
fi

exec cargo xtask "$@"
