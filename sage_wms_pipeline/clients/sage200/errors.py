"""Typed errors of the Sage 200 client.

Every error says which call failed (method and URL path, never the query string's secrets nor
headers) and carries Sage's own message when the response had one. Callers branch on the class:
a `BusinessRuleError` needs a human, a `RecordLockedError` or `UnavailableError` may clear by
itself, an `OutcomeUnknownError` means a write may or may not have been applied.
"""

from __future__ import annotations

import re

# Sage reports a record open elsewhere as a 400 whose text says it is in use or locked.
_LOCK_WORDS = re.compile(r"\b(in use|locked|lock(ed)? by)\b", re.IGNORECASE)
# "... order 0000000012 is in use ..." / "record 'SO-1' is locked": an id-like token (has a digit).
_LOCKED_RECORD = re.compile(
    r"(?:order|document|record|product|stocktake)\s*(?:no\.?|number)?\s*['\"]?([\w/-]*\d[\w/-]*)",
    re.IGNORECASE,
)


class Sage200Error(Exception):
    """Base class of every error the client raises about a Sage 200 call."""

    def __init__(
        self,
        summary: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        sage_message: str | None = None,
    ) -> None:
        self.summary = summary
        self.status = status
        self.method = method
        self.path = path
        self.sage_message = sage_message
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.method} {self.path}" if self.method and self.path else (self.path or "")
        parts = [self.summary]
        if where:
            parts.append(f"[{where}" + (f" -> {self.status}]" if self.status is not None else "]"))
        if self.sage_message:
            parts.append(f"Sage says: {self.sage_message}")
        return " ".join(parts)


class InvalidRequestError(Sage200Error, ValueError):
    """The caller's input was rejected by the client before anything was sent."""


class AuthError(Sage200Error):
    """401, or the token endpoint refused the credentials / refresh token."""


class ForbiddenError(Sage200Error):
    """403: the Sage user's role lacks the module."""


class NotFoundError(Sage200Error):
    """404: no such record, or the endpoint is absent in this Sage version."""


class BusinessRuleError(Sage200Error):
    """400 that is not a lock: Sage refused the request; retrying will not help."""


class RecordLockedError(Sage200Error):
    """The record is in use by another user (a 400 saying so, or 409/423)."""

    def __init__(
        self,
        summary: str,
        *,
        record: str | None = None,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        sage_message: str | None = None,
    ) -> None:
        self.record = record
        super().__init__(summary, status=status, method=method, path=path, sage_message=sage_message)

    def _render(self) -> str:
        base = super()._render()
        return f"{base} (locked record: {self.record})" if self.record else base


class RateLimitedError(Sage200Error):
    """429: too many requests. `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(
        self,
        summary: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        sage_message: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(summary, status=status, method=method, path=path, sage_message=sage_message)


class UnavailableError(Sage200Error):
    """5xx, gateway timeout, timeout or connection failure where the request was not applied
    (or is safe to repeat because it only reads)."""

    def __init__(
        self,
        summary: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        sage_message: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(summary, status=status, method=method, path=path, sage_message=sage_message)


class OutcomeUnknownError(Sage200Error):
    """A write was sent but no answer came back (timeout, dropped connection, 500/502/504).

    Sage may or may not have applied it, so it is never re-sent blindly: read the record back and
    decide (`Sage200Client.confirm_despatch` does this itself).
    """


def is_lock_message(message: str | None) -> bool:
    return bool(message and _LOCK_WORDS.search(message))


def locked_record(message: str | None) -> str | None:
    """The record a lock message names, e.g. the order's document number, if it names one."""
    if not message:
        return None
    match = _LOCKED_RECORD.search(message)
    return match.group(1) if match else None
