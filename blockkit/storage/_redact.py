"""Redaction of secret values from text (logs, provenance, exports)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"


def _variants(secret: str) -> set[str]:
    # A secret leaks in more shapes than its raw form: URL-quoted in a query,
    # JSON-escaped in a record, base64'd in a Basic auth header.
    out = {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1]}
    return {v for v in out if v}


class Redactor:
    """Replaces every known secret value (and its quoted/escaped forms) with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Remember more secret values."""
        for s in secrets:
            if s:
                self._values |= _variants(str(s))

    def add_basic_auth(self, username: str, password: str) -> None:
        """Remember the password and the Basic auth token built from it."""
        self.add(password)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.add(token)

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        """Return text with every secret replaced by ***."""
        # longest first, so a secret containing another is masked whole
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def redact_obj(self, obj: object) -> object:
        """Redact every string inside a JSON-like structure."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact(str(k)): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v) for v in obj]
        return obj

    def logging_filter(self) -> logging.Filter:
        """A logging.Filter that redacts messages and args before any handler sees them."""
        redactor = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                record.msg = redactor.redact(record.getMessage())
                record.args = None
                return True

        return _Filter()


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in text with ***."""
    return Redactor(secrets).redact(text)
