"""End-to-end fixtures: the real loopback servers of tests/servers.py (S3, STAC over HTTP)."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/ is not a package and --import-mode=importlib does not put the repo on sys.path
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.servers import seaweed, stac_server  # noqa: E402,F401  (fixtures)
