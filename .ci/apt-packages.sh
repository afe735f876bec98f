#!/usr/bin/env bash
# Debian packages the tests use: bubblewrap (per-step namespaces for the process
# engine) and chromium (headless checks of the run report). Idempotent; runs as
# root. The mirror is whatever this machine's apt is configured with.
set -euo pipefail
say() { echo "[apt-packages] $*"; }
[ "$(id -u)" -eq 0 ] || { say "not root: skipped"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -eq 0 ]; then
    say "bubblewrap and chromium already installed"
    exit 0
fi
say "installing ${need[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
say "installed ${need[*]}"
