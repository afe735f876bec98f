"""Storage fixtures: the real loopback servers from tests/servers.py, and a keystore holding their keys."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ is not a package and --import-mode=importlib does not put the repo on sys.path
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.servers import SeaweedS3, dav_server, seaweed, stac_server  # noqa: E402,F401  (fixtures)

from blockkit.storage._keystore import Keystore, S3KeyConfig  # noqa: E402


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    """An empty keystore in the test's folder (unencrypted private key, mode 0600)."""
    return Keystore(tmp_path / "keystore")


@pytest.fixture
def s3_keystore(keystore: Keystore, seaweed: SeaweedS3) -> Keystore:
    """A keystore with `s3` (admin, bucket artifacts), `s3-bad` (wrong secret) and `s3-ro` (read-only) keys."""
    seaweed.make_bucket("artifacts")
    keystore.add("s3", S3KeyConfig(seaweed.access_key, seaweed.secret_key, seaweed.endpoint, seaweed.region, "artifacts"))
    keystore.add("s3-bad", S3KeyConfig(seaweed.access_key, "wrong-" + seaweed.secret_key, seaweed.endpoint,
                                       seaweed.region, "artifacts"))
    keystore.add("s3-ro", S3KeyConfig(seaweed.reader_access_key, seaweed.reader_secret_key, seaweed.endpoint,
                                      seaweed.region, "artifacts"))
    return keystore
