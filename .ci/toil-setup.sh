#!/usr/bin/env bash
# Installs Toil with its CWL runner (toil-cwl-runner) into its own virtual environment, so that
# Toil's pinned cwltool never meets the project's. Idempotent: a second call with the venv in place
# and the pinned version installed does nothing. The venv is BLOCKKIT_TOIL_VENV, by default
# /opt/blockkit-toil when run as root (shared by every checkout on the machine), else .venv-toil
# in the checkout (ignored by git). tests/export/test_toil.py looks in the same places.
set -euo pipefail
cd "$(dirname "$0")/.."
TOIL_VERSION="${BLOCKKIT_TOIL_VERSION:-9.6.0}"
if [ -n "${BLOCKKIT_TOIL_VENV:-}" ]; then
  venv="$BLOCKKIT_TOIL_VENV"
elif [ "$(id -u)" = "0" ]; then
  venv=/opt/blockkit-toil
else
  venv="$PWD/.venv-toil"
fi
if [ -x "$venv/bin/toil-cwl-runner" ] && [ "$("$venv/bin/toil" --version 2>/dev/null)" = "$TOIL_VERSION" ]; then
  echo "toil-setup: Toil $TOIL_VERSION already in $venv"
  exit 0
fi
python="${PYTHON:-python3}"
echo "toil-setup: installing Toil $TOIL_VERSION into $venv (takes a few minutes)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "toil[cwl]==$TOIL_VERSION"
"$venv/bin/toil" --version >/dev/null
echo "toil-setup: Toil $("$venv/bin/toil" --version) in $venv"
