#!/usr/bin/env bash
# A Python 3.9 for the block environments of UP42-style blocks on the process engine
# (tests/up42/test_up42_python39.py: up42-blockutils 1.2.4 needs Python < 3.10).
# blockkit finds it by itself (python3.N on PATH, pyenv's versions, /usr/bin, /usr/local/bin).
# Idempotent: checks that one exists and can make a venv with pip and compile an extension
# (Python.h); installs Debian's python3.9 where the suite has it. Exit 1 when none can be had.
set -euo pipefail
say() { echo "[python39-setup] $*"; }
find39() {
    local candidate
    for candidate in "$(command -v python3.9 2>/dev/null || true)" \
            "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9 /usr/local/bin/python3.9 /usr/bin/python3.9; do
        [ -n "$candidate" ] && [ -x "$candidate" ] || continue
        if "$candidate" -c 'import sys, sysconfig, os, venv, ensurepip
sys.exit(sys.version_info[:2] != (3, 9) or not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
if found=$(find39); then
    say "Python 3.9: $found ($("$found" --version 2>&1))"
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    if apt-cache show python3.9-venv >/dev/null 2>&1; then
        say "installing Debian's python3.9"
        apt-get install -y -qq --no-install-recommends python3.9 python3.9-venv python3.9-dev >/dev/null
    fi
fi
if found=$(find39); then
    say "Python 3.9: $found"
    exit 0
fi
say "no Python 3.9 with venv and headers on this machine (not in PATH, pyenv, nor Debian's suite); install one (pyenv install 3.9) for the UP42 block tests"
exit 1
