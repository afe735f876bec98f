"""The storage layer's errors (keystore, artifacts, stage-in and stage-out), by name.

They are defined, with the whole tree drawn, in `blockkit.contract.errors`; this module only
names the ones the storage layer raises, so its modules import them from one place.
"""

from __future__ import annotations

from blockkit.contract.errors import (
    AccessDenied,
    ApiConnectionError,
    ArtifactsError,
    DamagedPrivateKey,
    ExpiryOutOfRange,
    InsecureCredentials,
    InsecureKeyFile,
    KeyNotFound,
    KeyPairMismatch,
    KeystoreError,
    MissingPrivateKey,
    NoOutputError,
    NoProviderConfigured,
    SourceNotFound,
    StorageError,
    TamperedEntry,
    TargetNotEmpty,
    TooLarge,
    TransferFailed,
    UnsafePath,
    UnsupportedKeyType,
    UnsupportedURI,
    UploadFailed,
    WrongKeyType,
    WrongPassphrase,
)

__all__ = [
    "AccessDenied",
    "ApiConnectionError",
    "ArtifactsError",
    "ExpiryOutOfRange",
    "InsecureCredentials",
    "InsecureKeyFile",
    "DamagedPrivateKey",
    "KeyNotFound",
    "KeyPairMismatch",
    "MissingPrivateKey",
    "KeystoreError",
    "NoOutputError",
    "NoProviderConfigured",
    "SourceNotFound",
    "StorageError",
    "TooLarge",
    "TamperedEntry",
    "TargetNotEmpty",
    "TransferFailed",
    "UnsafePath",
    "UnsupportedKeyType",
    "UnsupportedURI",
    "UploadFailed",
    "WrongKeyType",
    "WrongPassphrase",
]
