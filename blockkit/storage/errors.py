"""Storage errors: keystore, artifacts, stage-in and stage-out, each with an exit code and one actionable line.

    BlockkitError
    ├── KeystoreError (WRONG_INPUT_ERROR)
    │   ├── KeyNotFound, WrongKeyType, WrongPassphrase, InsecureKeyFile, TamperedEntry
    │   └── MissingPrivateKey, DamagedPrivateKey, KeyPairMismatch
    ├── ArtifactsError (INPUT_PARAMETERS_ERROR): NoProviderConfigured, UnsupportedKeyType, ExpiryOutOfRange,
    │   └── UploadFailed (API_CONNECTION_ERROR)
    ├── StorageError (WRONG_INPUT_ERROR): UnsupportedURI, UnsafePath, SourceNotFound, AccessDenied,
    │   TooLarge, InsecureCredentials, TargetNotEmpty
    └── TransferFailed (API_CONNECTION_ERROR): retries exhausted, deadline passed
"""

from __future__ import annotations

from blockkit.contract.errors import (
    ApiConnectionError,
    BlockkitError,
    ExitCode,
    NoOutputError,
    WrongInputError,
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


class KeystoreError(BlockkitError):
    """The keystore cannot give out a key (missing, locked, tampered, wrong type)."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class KeyNotFound(KeystoreError):
    """No key of that name in the keystore."""


class WrongKeyType(KeystoreError):
    """The key exists but is of another type than the caller needs."""


class WrongPassphrase(KeystoreError):
    """The keystore's private key could not be unlocked with the given passphrase."""


class MissingPrivateKey(KeystoreError):
    """The keystore holds keys or a public key but its private key file is gone (never recreated silently)."""


class DamagedPrivateKey(KeystoreError):
    """The private key file is there but unreadable: truncated, edited or not a PEM private key."""


class KeyPairMismatch(KeystoreError):
    """public_key.pem is not the public half of private_key.pem: new keys would be unreadable."""


class InsecureKeyFile(KeystoreError):
    """The unencrypted private key file is readable by others."""


class TamperedEntry(KeystoreError):
    """An entry failed authentication: it was modified, swapped or belongs to another keystore."""


class ArtifactsError(BlockkitError):
    """Root of artifact (upload + presigned URL) errors."""

    exit_code = ExitCode.INPUT_PARAMETERS_ERROR


class NoProviderConfigured(ArtifactsError):
    """No keystore key names an object store to put artifacts in."""


class UnsupportedKeyType(ArtifactsError):
    """The key is not an S3 key, so it cannot hold artifacts."""


class UploadFailed(ArtifactsError):
    """The object store refused or lost the upload."""

    exit_code = ExitCode.API_CONNECTION_ERROR


class ExpiryOutOfRange(ArtifactsError):
    """A presigned URL expiry outside 1 s .. 7 days."""


class StorageError(WrongInputError):
    """A stage-in/out request that cannot be served as given."""


class UnsupportedURI(StorageError):
    """Unknown scheme or malformed URI."""


class UnsafePath(StorageError):
    """A key or asset href would write outside the target folder."""


class TargetNotEmpty(StorageError):
    """A stage-out target already holds files: refused unless overwrite is asked for."""


class SourceNotFound(StorageError):
    """The source answered 404 or the path does not exist."""


class AccessDenied(StorageError):
    """The source or target answered 401/403: wrong or missing credentials."""


class TooLarge(StorageError):
    """A file or a whole stage-in is larger than its limit (TransferLimits), or a body is compressed."""


class InsecureCredentials(StorageError):
    """A key's credentials would travel over plain http to a host that is not loopback."""


class TransferFailed(ApiConnectionError):
    """A transfer failed after retries, or the bytes did not match size/checksum."""
