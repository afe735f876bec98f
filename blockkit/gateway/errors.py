"""Gateway errors: S3 protocol errors sent to clients, and setup errors raised to the caller."""

from __future__ import annotations

from blockkit.contract.errors import BlockkitError, ExitCode


class GatewayError(BlockkitError):
    """The gateway could not be set up or started."""

    exit_code = ExitCode.UNEXPECTED_ERROR


class GatewayConfigError(GatewayError):
    """A bucket name or folder given to the gateway is unusable."""


class GatewayStartError(GatewayError):
    """The gateway could not listen (port in use, subprocess died, ...)."""


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
