"""AWS Signature Version 4 checks: Authorization header, presigned query and aws-chunked chunk signatures."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Mapping
from urllib.parse import quote, unquote, unquote_to_bytes

from blockkit.gateway._errors import S3Error, access_denied

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*SignedHeaders=(?P<sh>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-fA-F]+)"
)


@dataclass(frozen=True)
class Credentials:
    """The one access key / secret key pair the gateway accepts when auth is on."""

    access_key: str
    secret_key: str


@dataclass(frozen=True)
class SignatureContext:
    """What a verified request needs later to check aws-chunked chunk signatures."""

    signing_key: bytes
    amz_date: str
    scope: str
    seed_signature: str


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Derive the SigV4 signing key for a date/region/service scope.

    Args:
        secret: the secret access key.
        date: the scope's date, YYYYMMDD.
        region: the scope's region.
        service: the scope's service ("s3").
    """
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def _uri_encode(value: str, safe: str) -> str:
    return quote(value, safe=safe)


def _reencode(raw: str, safe: str) -> str:
    """Decode a URL piece to its bytes and encode it the SigV4 way (bytes-exact, invalid UTF-8 kept)."""
    return quote(unquote_to_bytes(raw.encode("latin-1", "surrogateescape")), safe=safe)


def canonical_query(raw_query: str, drop: str | None = None) -> str:
    """The canonical query string: each name/value decoded, re-encoded and sorted."""
    pairs: list[tuple[str, str]] = []
    if raw_query:
        for item in raw_query.split("&"):
            if not item:
                continue
            name, _, value = item.partition("=")
            if drop is not None and unquote(name) == drop:
                continue
            pairs.append((_reencode(name.replace("+", "%20"), "-_.~"), _reencode(value.replace("+", "%20"), "-_.~")))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def _canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    lines = []
    for name in signed:
        value = headers.get(name)
        if value is None:
            raise access_denied(f"signed header {name!r} is missing from the request")
        lines.append(f"{name}:{' '.join(value.strip().split())}\n")
    return "".join(lines)


def _request_date(headers: Mapping[str, str]) -> str:
    """The request time for the string to sign: X-Amz-Date, else the Date header (what botocore signs
    when a Date header is set), as YYYYMMDDTHHMMSSZ."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        return amz_date
    date = headers.get("date")
    if date is None:
        raise access_denied("X-Amz-Date (or Date) is missing")
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        raise access_denied("the Date header is malformed") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _parse_amz_date(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise access_denied("X-Amz-Date is missing or malformed") from None


def _signature_mismatch() -> S3Error:
    return S3Error(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    )


@dataclass(frozen=True)
class Verifier:
    """Checks SigV4 on a request against the configured credentials."""

    credentials: Credentials
    region: str = "us-east-1"

    def verify(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        now: datetime | None = None,
    ) -> SignatureContext:
        """Verify a request (header or presigned form) or raise the S3 error a client expects.

        Args:
            method: the HTTP method.
            raw_path: the path as sent (still percent-encoded).
            raw_query: the query string as sent.
            headers: the request headers (lower-case names).
            now: the time to check the request's date against (default: now).
        """
        now = now or datetime.now(timezone.utc)
        query_names = {item.partition("=")[0] for item in raw_query.split("&") if item}
        auth = headers.get("authorization")
        if auth is not None:
            return self._verify_header(method, raw_path, raw_query, headers, auth, now)
        if "X-Amz-Signature" in query_names:
            return self._verify_presigned(method, raw_path, raw_query, headers, now)
        if "Signature" in query_names or "AWSAccessKeyId" in query_names:
            raise access_denied(
                "only AWS Signature Version 4 is accepted (boto3 presigned URLs: Config(signature_version='s3v4'))"
            )
        raise access_denied("anonymous requests are refused: this gateway requires credentials")

    def _check_scope(self, credential: str) -> tuple[str, str, str, str]:
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise access_denied("malformed credential scope")
        access_key, date, region, service, _ = parts
        if access_key != self.credentials.access_key:
            raise S3Error(
                403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
            )
        if region != self.region:
            raise S3Error(
                400, "AuthorizationHeaderMalformed", f"the region '{region}' is wrong; expecting '{self.region}'", Region=self.region
            )
        if service != "s3":
            raise S3Error(400, "AuthorizationHeaderMalformed", f"the service '{service}' in the credential scope is wrong; expecting 's3'")
        return access_key, date, region, service

    def _verify_header(
        self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], auth: str, now: datetime
    ) -> SignatureContext:
        if not auth.startswith(ALGORITHM):
            raise access_denied("only AWS Signature Version 4 is accepted")
        m = _AUTH_RE.match(auth.strip())
        if not m:
            raise access_denied("malformed Authorization header")
        _, date, region, service = self._check_scope(m.group("cred"))
        amz_date = _request_date(headers)
        when = _parse_amz_date(amz_date)
        if not amz_date.startswith(date):
            raise access_denied("credential scope date does not match X-Amz-Date")
        if abs(now - when) > MAX_SKEW:
            raise S3Error(403, "RequestTimeTooSkewed", "The difference between the request time and the server's time is too large.")
        signed = m.group("sh").lower().split(";")
        payload = headers.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD
        scope = f"{date}/{region}/{service}/aws4_request"
        key = signing_key(self.credentials.secret_key, date, region, service)
        signature = m.group("sig").lower()
        query = canonical_query(raw_query)
        self._match(method, raw_path, query, headers, signed, payload, amz_date, scope, key, signature)
        return SignatureContext(key, amz_date, scope, signature)

    def _verify_presigned(
        self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], now: datetime
    ) -> SignatureContext:
        params: dict[str, str] = {}
        for item in raw_query.split("&"):
            name, _, value = item.partition("=")
            params[unquote(name)] = unquote(value.replace("+", "%20"))
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            raise access_denied("only AWS Signature Version 4 is accepted")
        _, date, region, service = self._check_scope(params.get("X-Amz-Credential", ""))
        amz_date = params.get("X-Amz-Date", "")
        when = _parse_amz_date(amz_date)
        try:
            expires = int(params.get("X-Amz-Expires", ""))
        except ValueError:
            raise access_denied("X-Amz-Expires is missing or malformed") from None
        if not 0 < expires <= MAX_PRESIGN_EXPIRES:
            raise access_denied("X-Amz-Expires must be between 1 and 604800 seconds")
        if when - MAX_SKEW > now:
            raise access_denied("Request is not valid yet")
        if now > when + timedelta(seconds=expires):
            raise access_denied("Request has expired")
        signed = params.get("X-Amz-SignedHeaders", "host").lower().split(";")
        scope = f"{date}/{region}/{service}/aws4_request"
        key = signing_key(self.credentials.secret_key, date, region, service)
        signature = params.get("X-Amz-Signature", "").lower()
        query = canonical_query(raw_query, drop="X-Amz-Signature")
        payload = headers.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD
        self._match(method, raw_path, query, headers, signed, payload, amz_date, scope, key, signature)
        return SignatureContext(key, amz_date, scope, signature)

    def _match(
        self,
        method: str,
        raw_path: str,
        query: str,
        headers: Mapping[str, str],
        signed: list[str],
        payload: str,
        amz_date: str,
        scope: str,
        key: bytes,
        signature: str,
    ) -> None:
        if "host" not in signed:
            raise access_denied("the Host header must be signed")
        canon_headers = _canonical_headers(headers, signed)
        # Clients differ in how they escape the path; S3 signs it encoded once, as sent.
        candidates = [raw_path, _reencode(raw_path, "/~")]
        for path in dict.fromkeys(candidates):
            creq = "\n".join([method, path, query, canon_headers, ";".join(signed), payload])
            # Header values carry the client's bytes (UTF-8 or not) as surrogate-escaped text.
            creq_bytes = creq.encode("utf-8", "surrogateescape")
            sts = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq_bytes).hexdigest()])
            expected = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, signature):
                return
        raise _signature_mismatch()


def chunk_signature(ctx: SignatureContext, previous: str, chunk_sha256: str) -> str:
    """The signature of one aws-chunked chunk, chained from the previous one."""
    sts = "\n".join([f"{ALGORITHM}-PAYLOAD", ctx.amz_date, ctx.scope, previous, EMPTY_SHA256, chunk_sha256])
    return hmac.new(ctx.signing_key, sts.encode(), hashlib.sha256).hexdigest()


def trailer_signature(ctx: SignatureContext, previous: str, trailer: bytes) -> str:
    """The signature of the trailing headers of a signed aws-chunked body."""
    sts = "\n".join(
        [f"{ALGORITHM}-TRAILER", ctx.amz_date, ctx.scope, previous, hashlib.sha256(trailer).hexdigest()]
    )
    return hmac.new(ctx.signing_key, sts.encode(), hashlib.sha256).hexdigest()
