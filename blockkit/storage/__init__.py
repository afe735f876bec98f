"""Storage: stage-in/out (local, http, STAC, S3, WebDAV), the encrypted keystore, artifacts and redaction.

Heavy libraries (boto3, requests, pystac, cryptography) load only when used.
"""

from __future__ import annotations

from blockkit._lazy import lazy_exports

_EXPORTS = {
    "stage_in": "blockkit.storage._stagein",
    "stage_out": "blockkit.storage._stageout",
    "check_target": "blockkit.storage._stageout",
    "Keystore": "blockkit.storage._keystore",
    "Key": "blockkit.storage._keystore",
    "KeyInfo": "blockkit.storage._keystore",
    "S3KeyConfig": "blockkit.storage._keystore",
    "WebDavKeyConfig": "blockkit.storage._keystore",
    "Artifact": "blockkit.storage._artifacts",
    "ArtifactStore": "blockkit.storage._artifacts",
    "upload_artifact": "blockkit.storage._artifacts",
    "presigned_url": "blockkit.storage._artifacts",
    "Redactor": "blockkit.storage._redact",
    "redact": "blockkit.storage._redact",
    "public_url": "blockkit.storage._transfer",
    "RetryPolicy": "blockkit.storage._transfer",
    "TransferLimits": "blockkit.storage._transfer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
