"""JSON that keeps money and quantities exact: Decimal in, Decimal out, never via float."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import simplejson


def iso_z(value: datetime) -> str:
    """UTC timestamp the way Sage and Mintsoft filters expect it: `2026-11-25T09:30:00.000Z`."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return iso_z(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, **kwargs: Any) -> str:
    return simplejson.dumps(obj, use_decimal=True, default=_default, ensure_ascii=False, **kwargs)


def loads(text: str | bytes) -> Any:
    return simplejson.loads(text, use_decimal=True)
