#!/usr/bin/env bash
# Make a Docker engine and the blockkit base image available on this machine.
#
# Idempotent; runs as root. Nothing is pulled (there is no image registry):
# the base image is bootstrapped from the Debian mirror this machine's apt
# already uses, read at run time so no host name is written down anywhere.
#
#   bash .ci/docker-setup.sh                              # engine + blockkit-base:bookworm
#   BLOCKKIT_BASE_SUITE=bullseye bash .ci/docker-setup.sh # engine + blockkit-base:bullseye
#   BLOCKKIT_BASE_IMAGE=name:tag bash .ci/docker-setup.sh # another name (default blockkit-base:<suite>)
#
# bullseye (Python 3.9) is the base for UP42-style blocks whose requirements need
# Python < 3.10 (e.g. up42-blockutils 1.2.4): it also carries pip, a `python`
# command and a C compiler, as the python:3.x images those blocks were written for
# did (`blockkit build` compiles requirements that have no wheel for 3.9 in it).
set -euo pipefail

SUITE="${BLOCKKIT_BASE_SUITE:-bookworm}"
BASE_IMAGE="${BLOCKKIT_BASE_IMAGE:-blockkit-base:$SUITE}"
case "$SUITE" in
    bookworm) INCLUDE="python3,python3-venv" ;;
    bullseye) INCLUDE="python3,python3-venv,python3-pip,python-is-python3,python3-dev,gcc,libc6-dev" ;;
    *) echo "[docker-setup] ERROR: BLOCKKIT_BASE_SUITE must be bookworm or bullseye, not '$SUITE'" >&2; exit 1 ;;
esac
DOCKERD_LOG="${BLOCKKIT_DOCKERD_LOG:-/var/log/blockkit-dockerd.log}"
DOCKERD_WAIT_S="${BLOCKKIT_DOCKERD_WAIT_S:-90}"

say() { echo "[docker-setup] $*"; }
die() { echo "[docker-setup] ERROR: $*" >&2; exit 1; }
trap 'echo "[docker-setup] ERROR: unexpected failure at line $LINENO: $BASH_COMMAND" >&2' ERR

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts dockerd)"

export DEBIAN_FRONTEND=noninteractive

# --- 1. packages -----------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    say "installing ${need_pkgs[*]} (apt)"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null || die "apt-get install ${need_pkgs[*]} failed"
else
    say "dockerd and debootstrap already installed"
fi

# --- 2. the engine ---------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "docker daemon already answers"
else
    say "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # No iptables: this machine's kernel/network setup does not allow it, and
    # block containers run with network_mode=none anyway.
    # A pid file left by a daemon that died (e.g. a killed CI job) stops dockerd from starting.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    # setsid + nohup: the daemon must outlive this script and the CI step that ran it.
    setsid nohup dockerd --iptables=false >>"$DOCKERD_LOG" 2>&1 < /dev/null &
    waited=0
    until docker info >/dev/null 2>&1; do
        if [ "$waited" -ge "$DOCKERD_WAIT_S" ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_WAIT_S}s (see $DOCKERD_LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "docker daemon answers after ${waited}s"
fi

# --- 3. the base image -----------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE already exists"
    exit 0
fi

# The mirror comes from apt's own configuration (deb822 first, then the
# one-line format); the security archive is skipped, debootstrap needs the main one.
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
        /etc/apt/sources.list.d/debian.sources)"
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } else break } }' \
        /etc/apt/sources.list)"
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"

rootfs="$(mktemp -d /var/tmp/blockkit-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

say "bootstrapping $SUITE (minbase + $INCLUDE) into $rootfs; this takes a few minutes"
if ! debootstrap --variant=minbase --include="$INCLUDE" \
        "$SUITE" "$rootfs" "$mirror" >"$rootfs.debootstrap.log" 2>&1; then
    tail -n 20 "$rootfs.debootstrap.log" >&2 || true
    die "debootstrap failed (full log: $rootfs.debootstrap.log)"
fi
rm -f "$rootfs.debootstrap.log"

# Keep the image small: downloaded .debs and apt lists are not needed inside.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

say "importing $rootfs as $BASE_IMAGE"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE" >/dev/null || die "docker import of $BASE_IMAGE failed"

docker run --rm --network none "$BASE_IMAGE" python3 -c 'import venv, ensurepip' \
    || die "$BASE_IMAGE was imported but python3/venv do not work inside it"
if [ "$SUITE" = bullseye ]; then
    docker run --rm --network none "$BASE_IMAGE" sh -c 'python --version && pip --version' >/dev/null \
        || die "$BASE_IMAGE was imported but python/pip do not work inside it"
fi
say "base image $BASE_IMAGE ready ($(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" | cut -c1-19))"
