"""Exact scaled integers for quantities and money.

Frames carry quantities and prices as int64 at a fixed scale, never as float:

- quantities: ``*_e5`` columns hold units × 10^5 (Sage 200 keeps quantities to 5 dp);
- unit prices: ``*_e5`` price columns hold GBP × 10^5 (Sage unit prices are 5 dp);
- values: ``*_pence`` columns hold whole pence (GBP × 100).

A quantity × price product is exact at 10^-10 GBP; it is rounded once, half away from zero, to
pence. Where that product could overflow int64 the arithmetic switches to Python integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import numpy as np
import pandas as pd

QTY_SCALE = 10**5
PRICE_SCALE = 10**5
PENCE_PER_GBP = 100
# qty_e5 × price_e5 is in 10^-10 GBP; this many of those make a penny.
_E10_PER_PENNY = QTY_SCALE * PRICE_SCALE // PENCE_PER_GBP
_INT64_SAFE = 2**62


class ScaleError(ValueError):
    """A value that cannot be held exactly at the required scale."""


def to_e5(value: Decimal | int | str, *, field: str = "value") -> int:
    """Decimal units or GBP -> int × 10^5; refuses anything finer than 5 dp or a float."""
    if isinstance(value, float):
        raise ScaleError(f"{field}: binary float {value!r} refused; pass Decimal or str")
    d = Decimal(value)
    if not d.is_finite():
        raise ScaleError(f"{field}: {value!r} is not a finite number")
    scaled = d * QTY_SCALE
    if scaled != scaled.to_integral_value():
        raise ScaleError(f"{field}: {value} has more than 5 decimal places")
    return int(scaled)


def from_e5(value: int | np.integer) -> Decimal:
    return Decimal(int(value)) / QTY_SCALE


def pence_to_gbp(value: int | np.integer) -> Decimal:
    return Decimal(int(value)) / PENCE_PER_GBP


def gbp_to_pence(value: Decimal | int | str, *, field: str = "value") -> int:
    if isinstance(value, float):
        raise ScaleError(f"{field}: binary float {value!r} refused; pass Decimal or str")
    d = Decimal(value) * PENCE_PER_GBP
    if d != d.to_integral_value():
        raise ScaleError(f"{field}: {value} is not a whole number of pence")
    return int(d)


def series_e5(values: Iterable[Decimal | int | str], *, field: str = "value") -> pd.Series:
    """A column of Decimals -> int64 × 10^5 (for building input frames from API records)."""
    return pd.Series([to_e5(v, field=field) for v in values], dtype="int64")


def div_round_half_up(num: np.ndarray | pd.Series, den: int | np.ndarray | pd.Series) -> np.ndarray:
    """Integer num / den rounded half away from zero, elementwise (den > 0)."""
    n = np.asarray(num)
    d = np.asarray(den)
    mag = (np.abs(n) * 2 + d) // (d * 2)
    return np.where(n < 0, -mag, mag)


def mul_exact(a: np.ndarray | pd.Series, b: np.ndarray | pd.Series) -> np.ndarray:
    """Elementwise a × b exactly: int64 when it surely fits, Python ints otherwise."""
    x = np.asarray(a, dtype=np.int64)
    y = np.asarray(b, dtype=np.int64)
    if len(x) == 0:
        return x * y
    bound = int(np.abs(x).max()) * int(np.abs(y).max())
    if bound < _INT64_SAFE:
        return x * y
    return np.array([int(i) * int(j) for i, j in zip(x, y, strict=True)], dtype=object)


def e10_to_pence(value_e10: np.ndarray) -> np.ndarray:
    """Exact 10^-10 GBP amounts -> pence, rounded half away from zero; int64 result."""
    if value_e10.dtype == object:
        out = []
        for v in value_e10:
            mag = (abs(v) * 2 + _E10_PER_PENNY) // (_E10_PER_PENNY * 2)
            out.append(-mag if v < 0 else mag)
        return np.array(out, dtype=np.int64)
    return div_round_half_up(value_e10, _E10_PER_PENNY).astype(np.int64)


def value_pence(qty_e5: np.ndarray | pd.Series, price_e5: np.ndarray | pd.Series) -> np.ndarray:
    """qty × unit price, to the penny."""
    return e10_to_pence(mul_exact(qty_e5, price_e5))
