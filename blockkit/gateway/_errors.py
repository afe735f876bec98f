"""Gateway errors: S3 error responses sent to clients, and the setup errors raised to the caller.

`S3Error` is deliberately off the `BlockkitError` tree: it is an S3 *response* (HTTP status, S3
code, XML body) that the request handler sends to its client and that never reaches a person.
The setup errors (`GatewayError` and below) are on the tree, defined in `blockkit.contract.errors`.
"""

from __future__ import annotations

from blockkit.contract.errors import GatewayConfigError, GatewayError, GatewayStartError

__all__ = [
    "GatewayConfigError",
    "GatewayError",
    "GatewayStartError",
    "S3Error",
    "access_denied",
    "invalid_argument",
    "malformed_xml",
    "no_such_bucket",
    "no_such_key",
    "not_implemented",
]


class S3Error(Exception):
    """An S3 error response: HTTP status, S3 code and a message for the XML body."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"S3Error({self.status}, {self.code!r}, {self.message!r})"


def access_denied(message: str = "Access Denied") -> S3Error:
    """403 AccessDenied."""
    return S3Error(403, "AccessDenied", message)


def no_such_bucket(bucket: str) -> S3Error:
    """404 NoSuchBucket."""
    return S3Error(404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)


def no_such_key(key: str) -> S3Error:
    """404 NoSuchKey."""
    return S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key)


def not_implemented(what: str) -> S3Error:
    """501 NotImplemented."""
    return S3Error(501, "NotImplemented", f"{what} is not implemented by the blockkit gateway")


def invalid_argument(message: str) -> S3Error:
    """400 InvalidArgument."""
    return S3Error(400, "InvalidArgument", message)


def malformed_xml(message: str = "The XML you provided was not well-formed or did not validate against our published schema") -> S3Error:
    """400 MalformedXML."""
    return S3Error(400, "MalformedXML", message)
