#!/usr/bin/env bash
# Installs the Docker registry (Debian's docker-registry, the CNCF distribution server) so that
# tests/export/test_push.py pushes to a real registry on 127.0.0.1 (the daemon allows plain HTTP
# there). The tests start and stop their own instance; nothing runs as a service. Idempotent.
set -euo pipefail
if command -v docker-registry >/dev/null 2>&1; then
  echo "registry-setup: docker-registry already installed"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
# The package may start its own service on :5000; the tests use their own instance on a free port.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
echo "registry-setup: $(docker-registry --version 2>/dev/null || echo docker-registry) installed"
