"""The check logic on frames built by the domain functions themselves: planted drift below and above
tolerance and materiality gives WARN and ERROR where expected, and a clean position passes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest

from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.domain.parity import stock_parity
from sage_wms_pipeline.domain.policy import validate_policy
from sage_wms_pipeline.domain.valuation import valuation_deltas
from sage_wms_pipeline_tests.check_position import E5, Catalogue, position_frames

CUTOFF = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)

# All Average cost, all in LEEDS (WMS warehouse 1).
CATALOGUE: Catalogue = {
    "MUG": ("Average", Decimal("2.15"), 100),
    "CANDLE": ("Average", Decimal("3.60"), 100),
    "TSHIRT": ("Average", Decimal("4.20"), 50),
    "THROW": ("Average", Decimal("22.40"), 20),
}


@pytest.fixture
def policy():
    return validate_policy(
        {
            "tolerances": {"default": {"abs_units": "1", "percent": "0"}, "value_materiality_gbp": "50"},
            "despatch_sla_hours": "4",
            "lock_deadline_minutes": 60,
            "warehouses": [{"sage_name": "LEEDS", "wms_warehouse_id": 1}],
            "skus": [{"sage_code": s, "wms_sku": s} for s in CATALOGUE],
        }
    )


@pytest.fixture
def thresholds(policy):
    return checks.Thresholds.from_policy(policy)


def _tables(policy, wms_qty: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parity and valuation as the domain computes them, for the given WMS quantities."""
    wms, sage, explanations, prices = position_frames(CATALOGUE, wms_qty)
    parity = stock_parity(wms, sage, explanations, policy, CUTOFF)
    detail, summary = valuation_deltas(parity, prices, policy)
    return parity, detail, summary


def _parity_with_values(parity: pd.DataFrame, detail: pd.DataFrame) -> pd.DataFrame:
    return parity.merge(
        detail[["sku", "warehouse", "unexplained_value_pence"]], on=["sku", "warehouse"], how="left"
    )


def test_clean_position_passes_every_finance_check(policy, thresholds):
    parity, detail, _summary = _tables(policy, {})
    drift = checks.inventory_drift(_parity_with_values(parity, detail), thresholds)
    value = checks.valuation_drift(detail, thresholds)
    assert drift.passed and value.passed
    assert drift.rows.empty and drift.records == ()
    assert drift.figures["lines_checked"] == 4
    assert value.figures["unexplained_value_abs_gbp"] == 0


def test_variance_within_tolerance_passes(policy, thresholds):
    # 0.5 units short on a 1-unit tolerance: a difference, but an accepted one.
    parity, detail, _ = _tables(policy, {"MUG": "99.5"})
    drift = checks.inventory_drift(_parity_with_values(parity, detail), thresholds)
    assert drift.passed
    # Valuation still reports the value: tolerance is about counting, not about the books.
    value = checks.valuation_drift(detail, thresholds)
    assert not value.passed and value.severity == "WARN"
    assert value.figures["unexplained_value_net_gbp"] == pytest.approx(-1.08)  # -0.5 × 2.15 = -1.075 → -1.08


def test_drift_beyond_tolerance_below_materiality_warns(policy, thresholds):
    # 5 T-shirts missing at £4.20 = £21.00, under the £50 materiality.
    parity, detail, _ = _tables(policy, {"TSHIRT": "45"})
    drift = checks.inventory_drift(_parity_with_values(parity, detail), thresholds)
    assert not drift.passed
    assert drift.severity == "WARN"
    assert drift.records == ("TSHIRT@LEEDS",)
    assert drift.figures["lines_out_of_tolerance"] == 1
    assert drift.figures["material_lines"] == 0
    assert drift.figures["unexplained_value_net_gbp"] == pytest.approx(-21.0)
    row = drift.rows.iloc[0]
    assert (row["sku"], row["wms_qty"], row["sage_qty"], row["unexplained_qty"]) == (
        "TSHIRT",
        "45",
        "50",
        "-5",
    )
    assert row["unexplained_value_gbp"] == "-21.00"
    assert "| TSHIRT" in drift.rows_markdown()


def test_material_drift_is_an_error_and_listed_first(policy, thresholds):
    # 10 throws missing (£224.00, material) and 5 T-shirts (£21.00, not).
    parity, detail, _summary = _tables(policy, {"THROW": "10", "TSHIRT": "45"})
    drift = checks.inventory_drift(_parity_with_values(parity, detail), thresholds)
    assert not drift.passed and drift.severity == "ERROR"
    assert drift.records == ("THROW@LEEDS", "TSHIRT@LEEDS")
    assert drift.figures["material_lines"] == 1
    assert drift.figures["unexplained_value_abs_gbp"] == pytest.approx(245.0)

    value = checks.valuation_drift(detail, thresholds)
    assert not value.passed and value.severity == "ERROR"
    assert value.figures["unexplained_value_abs_gbp"] == pytest.approx(245.0)
    assert value.figures["unexplained_value_net_gbp"] == pytest.approx(-245.0)


def test_gain_and_loss_net_but_absolute_does_not(policy, thresholds):
    # +10 mugs (£21.50) and -6 candles (-£21.60): net -£0.10, absolute £43.10.
    _parity, detail, _ = _tables(policy, {"MUG": "110", "CANDLE": "94"})
    value = checks.valuation_drift(detail, thresholds)
    assert value.figures["unexplained_value_net_gbp"] == pytest.approx(-0.10)
    assert value.figures["unexplained_value_abs_gbp"] == pytest.approx(43.10)
    assert value.severity == "WARN"


def test_parity_without_values_warns_on_quantity_only(policy, thresholds):
    parity, _, _ = _tables(policy, {"THROW": "10"})
    drift = checks.inventory_drift(parity, thresholds)
    assert not drift.passed and drift.severity == "WARN"
    assert "note" in drift.figures


def test_missing_column_is_named(thresholds):
    with pytest.raises(checks.CheckInputError, match=r"stock_parity: missing column\(s\) within_tolerance"):
        checks.inventory_drift(
            pd.DataFrame(columns=["sku", "warehouse", "wms_qty_e5", "sage_qty_e5", "unexplained_e5"]),
            thresholds,
        )


def test_sync_illusion_lists_orders_past_sla_longest_first(thresholds):
    now = CUTOFF
    wms = pd.DataFrame(
        {
            "order_number": ["SO1", "SO2", "SO2", "SO3", "SO4"],
            "despatched_at": [
                now - timedelta(hours=5),  # past the 4 h SLA: WARN
                now - timedelta(hours=9),  # first parcel 9 h ago (twice the SLA): ERROR
                now - timedelta(hours=1),
                now - timedelta(hours=2),  # within SLA
                now - timedelta(hours=30),  # long ago, but posted: not open in Sage
            ],
        }
    )
    sage_open = pd.DataFrame({"order_number": ["SO1", "SO2", "SO3", "SO9"]})
    f = checks.sync_illusion(wms, sage_open, now, thresholds)
    assert not f.passed and f.severity == "ERROR"
    assert f.records == ("SO2", "SO1")
    assert list(f.rows["hours_waiting"]) == [9.0, 5.0]
    assert f.figures["orders_despatched_open_in_sage"] == 3

    only_warn = checks.sync_illusion(wms[wms["order_number"] == "SO1"], sage_open, now, thresholds)
    assert not only_warn.passed and only_warn.severity == "WARN"

    clean = checks.sync_illusion(wms[wms["order_number"].isin(["SO3", "SO4"])], sage_open, now, thresholds)
    assert clean.passed and clean.rows.empty


def _outbox(now: datetime, states: list[tuple[int, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [s[0] for s in states],
            "order_number": [f"SO{s[0]}" for s in states],
            "sku": "MUG",
            "state": [s[1] for s in states],
            "attempts": [s[2] for s in states],
            "created_at": [now - timedelta(minutes=90 if s[1] != "pending" else 5) for s in states],
            "last_error": ["record in use by another user" if s[1] != "posted" else None for s in states],
        }
    )


def test_stuck_and_orphaned(thresholds):
    now = CUTOFF
    none_open = pd.DataFrame({"kind": [], "record": []})
    clean = checks.stuck_and_orphaned(
        _outbox(now, [(1, "posted", 1), (2, "pending", 0)]), none_open, now, thresholds
    )
    assert clean.passed

    overdue = checks.stuck_and_orphaned(_outbox(now, [(3, "deferred", 4)]), none_open, now, thresholds)
    assert not overdue.passed and overdue.severity == "WARN"
    assert overdue.records == ("outbox#3",)

    exceptions = pd.DataFrame(
        {
            "kind": ["orphaned_shipment", "despatch_over_target", "orphaned_shipment"],
            "record": ["WMS order 77 / parcel 1", "SO0001009", "WMS order 78"],
            "resolved": [False, False, True],
            "first_seen": [now - timedelta(hours=2)] * 3,
        }
    )
    bad = checks.stuck_and_orphaned(
        _outbox(now, [(4, "stuck", 7), (3, "deferred", 4)]), exceptions, now, thresholds
    )
    assert not bad.passed and bad.severity == "ERROR"
    assert bad.records == ("outbox#4", "WMS order 77 / parcel 1", "SO0001009", "outbox#3")
    assert bad.figures == {
        "stuck_records": 1,
        "overdue_records": 1,
        "orphaned_shipments": 1,
        "status_refusals": 0,
        "despatched_beyond_wms": 1,
        "outbox_active": 1,
    }

    refused = _outbox(now, [(5, "stuck", 1)])
    refused.loc[0, "last_error"] = "Sage refused the despatch: order is on hold"
    f = checks.stuck_and_orphaned(refused, none_open, now, thresholds)
    assert f.severity == "ERROR" and f.figures["status_refusals"] == 1 and f.figures["stuck_records"] == 0
    assert f.rows.iloc[0]["problem"] == "refused for Sage status"


def test_manifest_totals(thresholds):
    orders = pd.DataFrame(
        {
            "order_number": ["SO1", "SO2"],
            "sage_total_e5": [100 * E5, 5_050_000],  # £100.00, £50.50
            "manifest_total_e5": [90 * E5, 50 * E5],
            "excluded_total_e5": [10 * E5, 0],
        }
    )
    f = checks.manifest_totals(orders, thresholds)
    assert not f.passed and f.severity == "ERROR"
    assert f.records == ("SO2",)
    assert f.rows.iloc[0]["difference_gbp"] == "-0.50"
    assert checks.manifest_totals(orders.iloc[:1], thresholds).passed


def test_free_stock_divergence(thresholds):
    available = pd.DataFrame(
        {
            "sku": ["MUG", "CANDLE", "THROW", "TSHIRT"],
            "warehouse": "LEEDS",
            "available_e5": [10 * E5, 0, 5 * E5, 3 * E5],
            "sage_free_stock_e5": pd.array([10 * E5, 4 * E5, 7 * E5, None], dtype="Int64"),
        }
    )
    f = checks.free_stock_divergence(available, thresholds)
    assert not f.passed and f.severity == "ERROR"  # CANDLE: Sage offers 4 the warehouse cannot ship
    assert f.records == ("CANDLE@LEEDS", "TSHIRT@LEEDS", "THROW@LEEDS")
    assert f.figures["oversell_risk_lines"] == 1
    assert f.figures["divergence_units_net"] == pytest.approx(4 + 2 - 3)

    warn_only = checks.free_stock_divergence(available.iloc[[0, 2]], thresholds)
    assert warn_only.severity == "WARN" and not warn_only.passed


def test_despatch_latency_percentiles(thresholds):
    base = CUTOFF - timedelta(days=1)
    minutes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 300]  # one posting took 5 h, past a 4 h target
    thresholds = dataclasses.replace(thresholds, latency_target=timedelta(hours=4))
    postings = pd.DataFrame(
        {
            "order_number": [f"SO{i}" for i in range(11)],
            "despatched_at": [base] * 11,
            "posted_at": [base + timedelta(minutes=m) for m in minutes] + [None],
        }
    )
    f = checks.despatch_latency(postings, thresholds)
    assert f.figures["postings_measured"] == 10
    assert f.figures["latency_p50_seconds"] == 5 * 60
    assert f.figures["latency_p95_seconds"] == 300 * 60  # nearest rank: the 10th of 10
    assert f.records == ("SO9",)
    assert not f.passed and f.severity == "WARN"
    assert f.figures["postings_past_target"] == 1

    # Within the target: passes, nothing listed.
    quick = checks.despatch_latency(postings.iloc[:9], thresholds)
    assert quick.passed and quick.figures["latency_p95_seconds"] == 9 * 60 and quick.rows.empty


def test_exceptions_by_owner():
    now = CUTOFF
    exc = pd.DataFrame(
        {
            "kind": ["sync_illusion", "sync_illusion", "stuck", "unknown_sku"],
            "owner": ["operations", "operations", "operations", "finance"],
            "resolved": [False, False, False, True],
            "first_seen": [now - timedelta(hours=h) for h in (3, 10, 1, 5)],
        }
    )
    summary = checks.exceptions_by_owner(exc)
    assert summary.to_dict("records") == [
        {"owner": "operations", "kind": "sync_illusion", "open": 2, "oldest_first_seen": "2026-11-30 12:30"},
        {"owner": "operations", "kind": "stuck", "open": 1, "oldest_first_seen": "2026-11-30 21:30"},
    ]


def test_gx_contracts_pass_on_domain_tables_and_catch_broken_ties(policy):
    parity, detail, summary = _tables(policy, {"THROW": "10", "MUG": "101"})
    ok = checks.gx_data_contracts(parity, detail, summary)
    assert ok.passed, ok.rows
    assert ok.figures["expectations_evaluated"] == 14

    tampered = summary.copy()
    tampered.loc[0, "net_unexplained_pence"] += 1  # a penny off
    dup = pd.concat([parity, parity[parity["sku"] == "THROW"]], ignore_index=True)
    bad = checks.gx_data_contracts(dup, detail, tampered)
    assert not bad.passed and bad.severity == "ERROR"
    labels = set(bad.rows["expectation"])
    assert "stock_parity: one row per SKU and warehouse" in labels
    assert any(label.startswith("valuation_summary.net_unexplained_pence ties") for label in labels)
    # The duplicate THROW line also breaks both parity→valuation quantity ties.
    assert bad.figures["expectations_failed"] == 4


def test_pandera_contract_reports_failure_cases(policy):
    from sage_wms_pipeline.storage.schemas import StockParity

    parity, _, _ = _tables(policy, {"THROW": "10"})
    assert checks.pandera_contract("stock_parity", parity, StockParity).passed
    broken = parity.copy()
    broken.loc[0, "explained_e5"] += 1  # explained no longer adds up
    f = checks.pandera_contract("stock_parity", broken, StockParity)
    assert not f.passed and f.severity == "ERROR"
    assert f.figures["failure_cases"] >= 1


def test_only_the_first_rows_are_listed_but_all_are_counted(policy):
    limited = checks.Thresholds.from_policy(policy, row_limit=2)
    parity, detail, _ = _tables(policy, {"THROW": "10", "TSHIRT": "45", "MUG": "90"})
    drift = checks.inventory_drift(_parity_with_values(parity, detail), limited)
    assert len(drift.rows) == 2 and drift.rows_total == 3
    assert drift.records == ("THROW@LEEDS", "MUG@LEEDS", "TSHIRT@LEEDS")  # £224, £21.50, £21.00
    assert drift.rows_markdown().endswith("… and 1 more")
    assert drift.figures["lines_out_of_tolerance"] == 3


def test_sums_are_exact_beyond_int64():
    big = pd.Series([2**62, 2**62, -(2**61)], dtype="int64")
    assert checks._int_sum(big) == 2**62 + 2**62 - 2**61
