"""Storage: stage-in/out (local, http, STAC, S3, WebDAV), the encrypted keystore, artifacts and redaction.

Heavy libraries (boto3, requests, pystac, cryptography) load only when used.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "stage_in": "blockkit.storage.stagein",
    "stage_out": "blockkit.storage.stageout",
    "check_target": "blockkit.storage.stageout",
    "Keystore": "blockkit.storage.keystore",
    "Key": "blockkit.storage.keystore",
    "KeyInfo": "blockkit.storage.keystore",
    "S3KeyConfig": "blockkit.storage.keystore",
    "WebDavKeyConfig": "blockkit.storage.keystore",
    "Artifact": "blockkit.storage.artifacts",
    "ArtifactStore": "blockkit.storage.artifacts",
    "upload_artifact": "blockkit.storage.artifacts",
    "presigned_url": "blockkit.storage.artifacts",
    "Redactor": "blockkit.storage.redact",
    "redact": "blockkit.storage.redact",
    "RetryPolicy": "blockkit.storage.transfer",
    "TransferLimits": "blockkit.storage.transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'blockkit.storage' has no attribute {name!r}")
