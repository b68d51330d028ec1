from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest

from sage_wms_pipeline.domain.parity import stock_parity
from sage_wms_pipeline.domain.policy import Policy, load_policy
from sage_wms_pipeline.domain.units import to_e5
from sage_wms_pipeline.scenario.model import (
    ExpectedVariance,
    OrderLine,
    Receipt,
    SalesOrder,
    Scenario,
    WmsOrderState,
)
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline_tests.domain.scenario_frames import frames

CUT = pd.Timestamp("2026-11-30T18:00:00Z")
UTC_TS = "datetime64[ns, UTC]"


def _policy(**kw: object) -> Policy:
    base = {
        "warehouses": [
            {"sage_name": "LEEDS", "wms_warehouse_id": 1},
            {"sage_name": "BRISTOL", "wms_warehouse_id": 2},
        ],
        "skus": [
            {"sage_code": "CARD6", "wms_sku": "CARD6", "wms_units_per_sage_unit": 6, "abc_class": "C"},
            {"sage_code": "CANDLE", "wms_sku": "CNDL-200", "abc_class": "A"},
        ],
    }
    base.update(kw)
    return Policy.model_validate(base)


def _wms(rows: list[tuple[str, int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(s, w, to_e5(a), to_e5(q)) for s, w, a, q in rows],
        columns=["wms_sku", "wms_warehouse_id", "sellable_e5", "quarantine_e5"],
    )


def _sage(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(s, w, g, to_e5(q), to_e5(q)) for s, w, g, q in rows],
        columns=["sku", "warehouse", "product_group", "quantity_in_stock_e5", "free_stock_e5"],
    )


def _events(rows: list[tuple[str, str, int, str, pd.Timestamp, pd.Timestamp | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kind": [r[0] for r in rows],
            "reference": [f"REF{i}" for i in range(len(rows))],
            "wms_sku": [r[1] for r in rows],
            "wms_warehouse_id": [r[2] for r in rows],
            "quantity_e5": [to_e5(r[3]) for r in rows],
            "event_at": pd.Series([r[4] for r in rows], dtype=UTC_TS),
            "sage_posted_at": pd.Series([r[5] if r[5] is not None else pd.NaT for r in rows], dtype=UTC_TS),
        }
    )


NO_EVENTS = _events([])


def _row(df: pd.DataFrame, sku: str, wh: str) -> pd.Series:
    hit = df[(df["sku"] == sku) & (df["warehouse"] == wh)]
    assert len(hit) == 1, f"expected one row for {sku}/{wh}, got {len(hit)}"
    return hit.iloc[0]


def test_despatched_not_posted_is_timing_and_respects_the_cutoff() -> None:
    wms = _wms([("MUG", 1, "90", "0")])
    sage = _sage([("MUG", "LEEDS", "HOME", "100")])
    ev = _events(
        [
            ("despatch_not_posted", "MUG", 1, "6", CUT - timedelta(hours=2), None),  # open at cut-off
            (
                "despatch_not_posted",
                "MUG",
                1,
                "3",
                CUT - timedelta(hours=5),
                CUT + timedelta(hours=1),
            ),  # posted after
            (
                "despatch_not_posted",
                "MUG",
                1,
                "7",
                CUT - timedelta(hours=5),
                CUT - timedelta(hours=1),
            ),  # posted before
            ("despatch_not_posted", "MUG", 1, "2", CUT + timedelta(minutes=1), None),  # after the cut-off
        ]
    )
    r = _row(stock_parity(wms, sage, ev, _policy(), CUT), "MUG", "LEEDS")
    assert r["variance_e5"] == to_e5("-10")
    assert r["in_flight_despatch_e5"] == to_e5("-9")
    assert r["unexplained_e5"] == to_e5("-1")
    assert r["explained_e5"] + r["unexplained_e5"] == r["variance_e5"]


def test_receipt_quarantine_uom_shrink_and_gain_each_land_in_their_cause() -> None:
    wms = _wms(
        [
            ("MUG", 1, "112", "0"),  # receipt of 12 booked in the WMS only
            ("THROW", 1, "10", "3"),  # 3 returns in quarantine, not in Sage
            ("CARD6", 1, "327", "0"),  # 54 packs of 6 + 3 loose eaches = half a pack
            ("HOODIE", 2, "45", "0"),  # 3 missing: shrink
            ("TEE", 2, "52", "0"),  # 2 found: gain
        ]
    )
    sage = _sage(
        [
            ("MUG", "LEEDS", "HOME", "100"),
            ("THROW", "LEEDS", "HOME", "10"),
            ("CARD6", "LEEDS", "GIFTS", "54"),
            ("HOODIE", "BRISTOL", "APPAREL", "48"),
            ("TEE", "BRISTOL", "APPAREL", "50"),
        ]
    )
    ev = _events([("receipt_not_in_sage", "MUG", 1, "12", CUT - timedelta(days=1), None)])
    df = stock_parity(wms, sage, ev, _policy(), CUT)
    mug, throw, card, hoodie, tee = (
        _row(df, "MUG", "LEEDS"),
        _row(df, "THROW", "LEEDS"),
        _row(df, "CARD6", "LEEDS"),
        _row(df, "HOODIE", "BRISTOL"),
        _row(df, "TEE", "BRISTOL"),
    )
    assert (mug["receipts_not_in_sage_e5"], mug["unexplained_e5"]) == (to_e5("12"), 0)
    assert (throw["quarantine_e5"], throw["variance_e5"], throw["unexplained_e5"]) == (
        to_e5("3"),
        to_e5("3"),
        0,
    )
    assert (card["wms_qty_e5"], card["mapping_e5"], card["unexplained_e5"]) == (
        to_e5("54.5"),
        to_e5("0.5"),
        0,
    )
    assert (hoodie["variance_e5"], hoodie["unexplained_e5"], hoodie["explained_e5"]) == (
        to_e5("-3"),
        to_e5("-3"),
        0,
    )
    assert (tee["unexplained_e5"], tee["within_tolerance"]) == (to_e5("2"), False)


def test_unmapped_sku_and_warehouse_are_mapping_not_shrink() -> None:
    policy = _policy(sku_identity_fallback=False)
    wms = _wms([("CNDL-200", 1, "40", "0"), ("MYSTERY", 1, "5", "0"), ("CNDL-200", 7, "2", "0")])
    sage = _sage([("CANDLE", "LEEDS", "HOME", "40"), ("ORPHAN", "LEEDS", "HOME", "4")])
    df = stock_parity(wms, sage, NO_EVENTS, policy, CUT)
    assert _row(df, "CANDLE", "LEEDS")["variance_e5"] == 0  # SKU code mapped across
    mystery = _row(df, "WMS:MYSTERY", "LEEDS")
    assert (mystery["mapping_e5"], mystery["unexplained_e5"], mystery["mapping_issue"]) == (
        to_e5("5"),
        0,
        "unmapped WMS SKU",
    )
    assert _row(df, "CANDLE", "WMS:7")["mapping_issue"] == "unmapped WMS warehouse"
    orphan = _row(df, "ORPHAN", "LEEDS")
    assert (orphan["mapping_e5"], orphan["unexplained_e5"]) == (to_e5("-4"), 0)


def test_tolerance_by_group_then_abc_then_default() -> None:
    policy = _policy(
        tolerances={
            "default": {"abs_units": "0", "percent": "0"},
            "by_abc_class": {
                "A": {"abs_units": "0", "percent": "1"},
                "C": {"abs_units": "1", "percent": "5"},
            },
            "by_product_group": {"GIFTS": {"abs_units": "3", "percent": "0"}},
        }
    )
    wms = _wms([("CNDL-200", 1, "198", "0"), ("CARD6", 1, "312", "0"), ("MUG", 1, "99", "0")])
    sage = _sage(
        [
            ("CANDLE", "LEEDS", "HOME", "200"),
            ("CARD6", "LEEDS", "GIFTS", "55"),
            ("MUG", "LEEDS", "HOME", "100"),
        ]
    )
    df = stock_parity(wms, sage, NO_EVENTS, policy, CUT)
    candle = _row(df, "CANDLE", "LEEDS")  # ABC A: 1% of 200 = 2 units
    assert (candle["tolerance_e5"], candle["within_tolerance"]) == (to_e5("2"), True)
    card = _row(df, "CARD6", "LEEDS")  # group GIFTS wins over ABC C: 3 units; variance -3
    assert (card["tolerance_e5"], card["unexplained_e5"], card["within_tolerance"]) == (
        to_e5("3"),
        to_e5("-3"),
        True,
    )
    mug = _row(df, "MUG", "LEEDS")  # default: zero tolerance
    assert (mug["tolerance_e5"], mug["within_tolerance"]) == (0, False)


def test_first_seen_carries_over_and_age_grows() -> None:
    wms = _wms([("MUG", 1, "95", "0"), ("TEE", 1, "10", "0")])
    sage = _sage([("MUG", "LEEDS", "HOME", "100"), ("TEE", "LEEDS", "APPAREL", "10")])
    first = stock_parity(wms, sage, NO_EVENTS, _policy(), CUT - timedelta(days=2))
    second = stock_parity(wms, sage, NO_EVENTS, _policy(), CUT, previous=first)
    mug = _row(second, "MUG", "LEEDS")
    assert mug["first_seen"] == CUT - timedelta(days=2)
    assert mug["age_seconds"] == 2 * 86400
    tee = _row(second, "TEE", "LEEDS")
    assert pd.isna(tee["first_seen"]) and tee["age_seconds"] == 0


def test_bad_input_is_refused_with_the_column_named() -> None:
    wms = _wms([("MUG", 1, "95", "0")])
    wms.loc[0, "sellable_e5"] = -5
    with pytest.raises(Exception, match="sellable_e5"):
        stock_parity(wms, _sage([]), NO_EVENTS, _policy(), CUT)


def _expected_by_cause(s: Scenario) -> dict[tuple[str, str], dict[str, Decimal]]:
    out: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for e in s.expected:
        out[(e.sku, e.warehouse)][e.cause] += e.quantity
    return out


def _assert_matches_ground_truth(s: Scenario) -> pd.DataFrame:
    f = frames(s)
    policy = Policy().with_scenario_mappings(s)
    df = stock_parity(f["wms_stock"], f["sage_holdings"], f["explanations"], policy, f["cutoff"])
    expected = _expected_by_cause(s)
    got_by_cause = {
        "timing": df["in_flight_despatch_e5"] + df["receipts_not_in_sage_e5"],
        "status": df["quarantine_e5"],
        "mapping": df["mapping_e5"],
        "unexplained": df["unexplained_e5"],
    }
    for i, row in df.iterrows():
        want = expected.get((row["sku"], row["warehouse"]), {})
        for cause, series in got_by_cause.items():
            assert series[i] == to_e5(want.get(cause, Decimal(0))), (row["sku"], row["warehouse"], cause)
    return df


def test_demo_scenario_parity_equals_its_ground_truth() -> None:
    from sage_wms_pipeline.scenario.io import read_scenario

    df = _assert_matches_ground_truth(read_scenario(demo_scenario_path()))
    assert (df["variance_e5"] != 0).sum() >= 2


def test_every_drift_kind_in_one_scenario_matches_ground_truth() -> None:
    from sage_wms_pipeline.scenario.io import read_scenario

    s = read_scenario(demo_scenario_path())
    opening = {(o.sku, o.warehouse): o for o in s.opening_stock}
    # true shrink (-3) and gain (+2), returns in quarantine (+4), a broken pack of 6 (+0.5 Sage units)
    opening[("HOODIE-NVY-M", "BRISTOL")].wms_on_hand = Decimal(21)
    opening[("THROW-WOOL", "LEEDS")].wms_on_hand = Decimal(26)
    opening[("GIFTBOX-S", "BRISTOL")].wms_quarantine = Decimal(4)
    opening[("CARD-XMAS-6", "BRISTOL")].wms_on_hand = Decimal(165)
    s.opening_stock = list(opening.values())
    s.receipts = [
        Receipt(
            reference="ASN1",
            sku="MUG-STONE",
            warehouse="3PL-MK",
            quantity=Decimal(24),
            unit_cost=Decimal("2.10"),
            expected=s.starts_at,
            booked_in_wms=True,
        )
    ]
    s.orders.append(
        SalesOrder(
            document_no="SO0009999",
            customer=s.orders[0].customer,
            document_date=s.starts_at,
            lines=[
                OrderLine(sku="CANDLE-FIG", warehouse="3PL-MK", quantity=Decimal(2), unit_price=Decimal(16))
            ],
            in_wms=WmsOrderState(status="DESPATCHED", despatched_quantities={0: Decimal(2)}),
        )
    )
    s.expected += [
        ExpectedVariance(sku="HOODIE-NVY-M", warehouse="BRISTOL", cause="unexplained", quantity=Decimal(-3)),
        ExpectedVariance(sku="THROW-WOOL", warehouse="LEEDS", cause="unexplained", quantity=Decimal(2)),
        ExpectedVariance(sku="GIFTBOX-S", warehouse="BRISTOL", cause="status", quantity=Decimal(4)),
        ExpectedVariance(sku="CARD-XMAS-6", warehouse="BRISTOL", cause="mapping", quantity=Decimal("0.5")),
        ExpectedVariance(sku="MUG-STONE", warehouse="3PL-MK", cause="timing", quantity=Decimal(24)),
        ExpectedVariance(sku="CANDLE-FIG", warehouse="3PL-MK", cause="timing", quantity=Decimal(-2)),
    ]
    df = _assert_matches_ground_truth(s)
    assert (df["variance_e5"] != 0).sum() == 8


def test_generated_scenario_parity_equals_its_ground_truth() -> None:
    generate = pytest.importorskip("sage_wms_pipeline.scenario.generate").generate
    s = generate(skus=300, warehouses=3, orders_per_day=200, days=2, seed=7)
    df = _assert_matches_ground_truth(s)
    assert (df["unexplained_e5"] != 0).any() and (df["mapping_e5"] != 0).any()


def test_shipped_policy_loads() -> None:
    assert load_policy().fulfilment_trigger == "despatch"
