from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pytest

from sage_wms_pipeline.domain.parity import stock_parity
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import to_e5, value_pence
from sage_wms_pipeline.domain.valuation import ValuationError, check_tie_out, valuation_deltas
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline_tests.domain.scenario_frames import frames

CUT = pd.Timestamp("2026-11-30T18:00:00Z")


def _parity(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """(sku, warehouse, variance, unexplained) -> the parity columns valuation reads."""
    return pd.DataFrame(
        {
            "cutoff": pd.Series([CUT] * len(rows), dtype="datetime64[ns, UTC]"),
            "sku": [r[0] for r in rows],
            "warehouse": [r[1] for r in rows],
            "variance_e5": [to_e5(r[2]) for r in rows],
            "explained_e5": [to_e5(r[2]) - to_e5(r[3]) for r in rows],
            "unexplained_e5": [to_e5(r[3]) for r in rows],
        }
    )


PRICES = pd.DataFrame(
    {
        "sku": ["STD", "AVG", "FIFO"],
        "product_group": ["GIFTS", "HOME", "APPAREL"],
        "costing_method": ["Standard", "Average", "FIFO"],
        "stock_nominal_code": ["1003", "1002", "1001"],
        "standard_cost_e5": [to_e5("1.80"), to_e5("0"), to_e5("0")],
        "average_buying_price_e5": [to_e5("1.70"), to_e5("2.15333"), to_e5("4.10")],
    }
)
LAYERS = pd.DataFrame(
    {
        "sku": ["FIFO"] * 3,
        "warehouse": ["LEEDS"] * 3,
        "received_at": pd.to_datetime(["2026-09-01", "2026-10-01", "2026-11-01"], utc=True),
        "quantity_e5": [to_e5("5"), to_e5("10"), to_e5("4")],
        "unit_cost_e5": [to_e5("3.90"), to_e5("4.00"), to_e5("4.25")],
    }
)


def _one(detail: pd.DataFrame, sku: str) -> pd.Series:
    return detail[detail["sku"] == sku].iloc[0]


def test_standard_and_average_use_their_prices_to_the_penny() -> None:
    detail, _ = valuation_deltas(
        _parity([("STD", "LEEDS", "-7", "-2"), ("AVG", "LEEDS", "3", "3")]), PRICES, Policy()
    )
    std, avg = _one(detail, "STD"), _one(detail, "AVG")
    assert (std["value_pence"], std["unexplained_value_pence"], std["explained_value_pence"]) == (
        -1260,
        -360,
        -900,
    )
    # 3 × 2.15333 = 6.45999 -> 6.46
    assert (avg["unit_cost_e5"], avg["value_pence"]) == (to_e5("2.15333"), 646)


def test_fifo_values_layer_by_layer_newest_first_by_default() -> None:
    detail, _ = valuation_deltas(_parity([("FIFO", "LEEDS", "-6", "-6")]), PRICES, Policy(), LAYERS)
    # newest 4 @ 4.25 + next 2 @ 4.00 = 25.00
    assert _one(detail, "FIFO")["value_pence"] == -2500
    assert _one(detail, "FIFO")["unit_cost_e5"] == to_e5("4.25")


def test_fifo_oldest_first_and_beyond_the_layers() -> None:
    policy = Policy(fifo_variance_layers="oldest_first")
    detail, _ = valuation_deltas(_parity([("FIFO", "LEEDS", "21", "1")]), PRICES, policy, LAYERS)
    # 5 @ 3.90 + 10 @ 4.00 + 4 @ 4.25 + 2 beyond the layers @ the last layer reached (4.25)
    f = _one(detail, "FIFO")
    assert f["value_pence"] == 1950 + 4000 + 1700 + 850
    assert f["unexplained_value_pence"] == 390  # 1 unit, oldest layer


def test_fifo_without_layers_falls_back_to_average_buying_price() -> None:
    detail, _ = valuation_deltas(_parity([("FIFO", "BRISTOL", "2", "2")]), PRICES, Policy(), LAYERS)
    assert _one(detail, "FIFO")["value_pence"] == 820


def test_half_pennies_round_away_from_zero() -> None:
    prices = PRICES.assign(standard_cost_e5=[to_e5("0.005"), 0, 0])
    detail, _ = valuation_deltas(_parity([("STD", "A", "1", "1")]), prices, Policy())
    assert _one(detail, "STD")["value_pence"] == 1
    detail, _ = valuation_deltas(_parity([("STD", "A", "-1", "-1")]), prices, Policy())
    assert _one(detail, "STD")["value_pence"] == -1


def test_huge_values_stay_exact_past_int64() -> None:
    q = np.array([to_e5("90000000.12345")], dtype=np.int64)
    p = np.array([to_e5("99999.99999")], dtype=np.int64)
    exact = (Decimal("90000000.12345") * Decimal("99999.99999") * 100).quantize(Decimal(1), ROUND_HALF_UP)
    assert int(value_pence(q, p)[0]) == int(exact)


def test_unpriced_lines_are_flagged_not_fatal() -> None:
    detail, summary = valuation_deltas(_parity([("NOPE", "LEEDS", "5", "0")]), PRICES, Policy())
    row = _one(detail, "NOPE")
    assert (bool(row["priced"]), row["costing_method"], row["value_pence"]) == (False, "Unpriced", 0)
    assert summary["lines"].sum() == 1


def test_materiality_flags_lines_over_the_threshold() -> None:
    policy = Policy.model_validate({"tolerances": {"value_materiality_gbp": "10.00"}})
    detail, _ = valuation_deltas(
        _parity([("STD", "LEEDS", "-6", "-6"), ("AVG", "LEEDS", "-4", "-4")]), PRICES, policy
    )
    assert bool(_one(detail, "STD")["material"]) and not bool(_one(detail, "AVG")["material"])


def test_summary_ties_to_detail_to_the_penny_on_random_data() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    skus = rng.choice(["STD", "AVG", "FIFO"], n)
    parity = pd.DataFrame(
        {
            "cutoff": pd.Series([CUT] * n, dtype="datetime64[ns, UTC]"),
            "sku": skus,
            "warehouse": [f"W{i}" for i in range(n)],
            "variance_e5": rng.integers(-(10**7), 10**7, n),
        }
    )
    parity["unexplained_e5"] = parity["variance_e5"] // 3
    parity["explained_e5"] = parity["variance_e5"] - parity["unexplained_e5"]
    layers = LAYERS.assign(warehouse="W1")
    detail, summary = valuation_deltas(parity, PRICES, Policy(), layers)
    assert summary["net_value_pence"].sum() == detail["value_pence"].sum()
    assert summary["abs_unexplained_pence"].sum() == detail["unexplained_value_pence"].abs().sum()
    assert (
        detail["explained_value_pence"] + detail["unexplained_value_pence"] == detail["value_pence"]
    ).all()
    # each Standard line equals the Decimal arithmetic
    std = detail[detail["costing_method"] == "Standard"].head(50)
    for _, r in std.iterrows():
        want = (Decimal(int(r["variance_e5"])) / 10**5 * Decimal("1.80") * 100).quantize(
            Decimal(1), ROUND_HALF_UP
        )
        assert r["value_pence"] == int(want)


def test_tie_out_check_catches_a_broken_summary() -> None:
    detail, summary = valuation_deltas(_parity([("STD", "LEEDS", "-7", "-2")]), PRICES, Policy())
    summary.loc[0, "net_value_pence"] += 1
    with pytest.raises(ValuationError, match="net_value_pence"):
        check_tie_out(detail, summary)


def test_demo_scenario_values_its_planted_drift() -> None:
    s = read_scenario(demo_scenario_path())
    f = frames(s)
    policy = Policy().with_scenario_mappings(s)
    parity = stock_parity(f["wms_stock"], f["sage_holdings"], f["explanations"], policy, f["cutoff"])
    detail, summary = valuation_deltas(parity, f["prices"], policy, f["fifo_layers"])
    tee = _one(detail[detail["warehouse"] == "LEEDS"], "TSHIRT-BLK-M")
    # FIFO, 10 short, newest layer first: 72 @ 4.20 covers it -> -42.00, all timing
    assert (tee["value_pence"], tee["explained_value_pence"]) == (-4200, -4200)
    mug = _one(detail[detail["warehouse"] == "BRISTOL"], "MUG-STONE")
    assert mug["value_pence"] == -6 * 215  # Average 2.15
    assert summary["net_value_pence"].sum() == -4200 - 1290
