#!/bin/sh
# Provisions a host the way a platform team would install blastgate on a CI
# runner: build and install the Debian package, start its unit, register a
# runner account, then run the demo against the installed daemon.
#
#   vagrant/provision.sh                # in the Vagrant VM (Ubuntu 24.04), as root
#   vagrant/provision.sh --here [--deb FILE]
#                                       # on this machine: skips the VM-only parts
#                                       # (toolchain repositories, systemd); the tests run this
#   vagrant/provision.sh --restart-here # (internal) restart the --here daemon
#   vagrant/provision.sh --stop-here    # (internal) stop the --here daemon
#
# Without systemd as PID 1 (--here), the daemon is started exactly as the
# installed unit's ExecStart says, with the unit's capability bounding set
# and NoNewPrivileges applied by setpriv.
set -eu

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUNNER="${BLASTGATE_RUNNER:-ci-runner}"
HERE_PID=/run/blastgate-here.pid
HERE_LOG=/var/log/blastgate-here.log
LLVM_MAJOR=22

here=0
deb=""
while [ $# -gt 0 ]; do
    case "$1" in
        --here) here=1 ;;
        --deb) shift; deb="$1" ;;
        --restart-here) action=restart ;;
        --stop-here) action=stop ;;
        *) echo "provision: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

unit_file() {
    for f in /usr/lib/systemd/system/blastgate.service /lib/systemd/system/blastgate.service; do
        [ -f "$f" ] && { echo "$f"; return; }
    done
    echo "provision: the package's unit is not installed" >&2
    exit 1
}

# The value of KEY= in the unit (last one wins, as in systemd).
unit_value() {
    sed -n "s/^$1=//p" "$(unit_file)" | tail -n 1
}

stop_here() {
    if [ -f "$HERE_PID" ]; then
        pid="$(cat "$HERE_PID")"
        kill -TERM "$pid" 2>/dev/null || true
        # The unit's TimeoutStopSec bounds this in the VM; here, 30 s.
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$HERE_PID"
    fi
}

start_here() {
    # ExecStartPre lines run first; a leading + (outside the sandbox) or -
    # (failure ignored) is systemd's, not the command's.
    sed -n 's/^ExecStartPre=//p' "$(unit_file)" | while read -r pre; do
        case "$pre" in
            -*) sh -c "${pre#-}" || true ;;
            *) sh -c "${pre#+}" ;;
        esac
    done
    exec_start="$(unit_value ExecStart)"
    user="$(unit_value User)"
    caps="$(unit_value CapabilityBoundingSet)"
    bounding="-all"
    for c in $caps; do
        c="$(echo "${c#CAP_}" | tr 'A-Z' 'a-z')"
        bounding="$bounding,+$c"
    done
    set -- setpriv --bounding-set "$bounding"
    if [ "$(unit_value NoNewPrivileges)" = "yes" ] || [ "$(unit_value NoNewPrivileges)" = "true" ]; then
        set -- "$@" --no-new-privs
    fi
    if [ -n "$user" ] && [ "$user" != "root" ]; then
        set -- "$@" --reuid "$user" --regid "$user" --init-groups
    fi
    mkdir -p /run/blastgate
    # shellcheck disable=SC2086 # ExecStart is a command line
    nohup "$@" $exec_start >"$HERE_LOG" 2>&1 &
    echo $! >"$HERE_PID"
    i=0
    until blastgate status >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt 200 ] || ! kill -0 "$(cat "$HERE_PID")" 2>/dev/null; then
            echo "provision: the daemon did not come up; its log:" >&2
            cat "$HERE_LOG" >&2
            exit 1
        fi
        sleep 0.1
    done
}

case "${action:-}" in
    restart) stop_here; start_here; exit 0 ;;
    stop) stop_here; exit 0 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "provision: run as root" >&2
    exit 1
fi

if [ $here -eq 0 ]; then
    echo "== VM only: the toolchain's package sources and Rust"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl ca-certificates gnupg build-essential
    # Ubuntu has no Debian rustc-web BPF packages: `cargo xtask setup` takes
    # the rustup-nightly route and needs LLVM from apt.llvm.org.
    install -d /etc/apt/keyrings
    curl -fsSL https://apt.llvm.org/llvm-snapshot.gpg.key | gpg --dearmor --yes -o /etc/apt/keyrings/llvm.gpg
    echo "deb [signed-by=/etc/apt/keyrings/llvm.gpg] http://apt.llvm.org/noble/ llvm-toolchain-noble-$LLVM_MAJOR main" \
        >/etc/apt/sources.list.d/llvm.list
    apt-get update -q
    "$REPO/xtask/bootstrap.sh" setup
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$REPO"

if [ -z "$deb" ]; then
    echo "== building the Debian package"
    deb="$(cargo xtask deb | tail -n 1)"
fi
echo "== installing $deb"
# apt resolves the package's dependencies; dpkg alone would not.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" ||
    dpkg -i "$deb"

echo "== the runner account, enrolled by uid"
id "$RUNNER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$RUNNER"
blastgate install --enrol-user "$RUNNER"

echo "== starting the unit"
if [ $here -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl enable blastgate.service
    systemctl restart blastgate.service
    restart="systemctl restart blastgate.service"
else
    stop_here
    start_here
    restart="$REPO/vagrant/provision.sh --restart-here"
fi
blastgate status

echo "== the demo, against the installed daemon"
cargo xtask demo --installed "$RUNNER" --restart "$restart"
echo "provisioned: blastgate is installed, running and guarding $RUNNER"
