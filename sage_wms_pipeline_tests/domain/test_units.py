from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from sage_wms_pipeline.domain.units import ScaleError, div_round_half_up, from_e5, gbp_to_pence, to_e5


def test_scaled_quantities_are_exact_and_refuse_floats_and_extra_places() -> None:
    assert to_e5(Decimal("12.34567")) == 1234567
    assert to_e5("-0.00001") == -1
    assert from_e5(1234567) == Decimal("12.34567")
    with pytest.raises(ScaleError, match="qty: binary float"):
        to_e5(1.5, field="qty")  # type: ignore[arg-type]
    with pytest.raises(ScaleError, match="more than 5 decimal places"):
        to_e5(Decimal("0.000001"))
    with pytest.raises(ScaleError, match="not a whole number of pence"):
        gbp_to_pence(Decimal("1.005"))


def test_integer_rounding_is_half_away_from_zero() -> None:
    got = div_round_half_up(np.array([5, -5, 4, -4, 6, -6, 15]), 10)
    assert got.tolist() == [1, -1, 0, 0, 1, -1, 2]
