"""Finance assets: cut-off handling, available stock against the WMS's own figures, valuation exact to
the penny and tied out, and the month-end job as the schedule runs it."""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from sage_wms_pipeline.defs import jobs
from sage_wms_pipeline.defs.finance.assets import resolve_cutoff
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline_tests.defs.conftest import INGEST, Pipeline
from sage_wms_pipeline_tests.defs.test_end_to_end import MintsoftReader, generated_pipeline, small_scenario

NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        (None, NOW),
        ("2026-10-31", datetime.combine(datetime(2026, 10, 31).date(), time.max, tzinfo=UTC)),
        ("2026-11-01T06:30:00Z", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        ("2026-11-01T06:30:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        # Mid-month: the month that has ended.
        ("month_end", datetime.combine(datetime(2026, 10, 31).date(), time.max, tzinfo=UTC)),
    ],
)
def test_resolve_cutoff(text: str | None, expected: datetime) -> None:
    assert resolve_cutoff(text, now=NOW) == expected


def test_month_end_on_the_last_day_is_that_day() -> None:
    last = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert resolve_cutoff("month_end", now=last) == datetime.combine(last.date(), time.max, tzinfo=UTC)


def test_bad_cutoff_names_the_field() -> None:
    with pytest.raises(dg.Failure, match="cutoff"):
        resolve_cutoff("last tuesday", now=NOW)


def test_available_stock_is_the_wms_level_less_open_orders(pipeline: Pipeline) -> None:
    pipeline.materialize(*INGEST)
    pipeline.materialize("order_manifests")
    pipeline.advance_wms_clock(1800)  # allocated and printed, nothing despatched
    pipeline.materialize("wms_orders", "wms_stock_levels", "available_stock")
    policy = pipeline.policy
    levels = MintsoftReader(pipeline.wms_url).pages("/api/Product/StockLevels", {})
    wms_available = {}
    for row in levels:
        sku = policy.sku_for_wms(row["SKU"])
        assert sku is not None
        key = (sku.sage_code, policy.sage_warehouse(int(row["WarehouseId"])))
        wms_available[key] = Decimal(row["Available"]) / sku.wms_units_per_sage_unit
    ours = {
        (r["sku"], r["warehouse"]): Decimal(r["available_e5"]) / 10**5
        for r in pipeline.query(core.available_stock)
    }
    assert ours == wms_available
    assert any(r["wms_allocated_e5"] for r in pipeline.query(core.available_stock))


def test_valuation_is_exact_and_ties_out(sandbox: Any, tmp_path: Path) -> None:
    scenario = small_scenario(17)
    pipeline = generated_pipeline(sandbox, tmp_path, scenario)
    pipeline.materialize(*INGEST)
    result = pipeline.materialize("stock_parity", "valuation_deltas", run_config=pipeline.parity_config())
    detail = pd.DataFrame(pipeline.query(core.valuation_deltas))
    summary = pd.DataFrame(pipeline.query(core.valuation_summary))
    assert int(summary["net_value_pence"].sum()) == int(detail["value_pence"].sum())
    assert int(summary["net_unexplained_pence"].sum()) == int(detail["unexplained_value_pence"].sum())
    assert (
        detail["explained_value_pence"] + detail["unexplained_value_pence"] == detail["value_pence"]
    ).all()

    # A true shrink on a Standard or Average item is valued at Sage's price, to the penny.
    products = {p["sku"]: p for p in pipeline.query(core.sage_products)}
    checked = 0
    for d in scenario.drift:
        if d.kind not in ("true_shrink", "true_gain"):
            continue
        p = products[d.sku]
        if p["costing_method"] == "FIFO":
            continue
        price = p["standard_cost"] if p["costing_method"] == "Standard" else p["average_buying_price"]
        row = detail[(detail["sku"] == d.sku) & (detail["warehouse"] == d.warehouse)].iloc[0]
        pence = (d.quantity * price * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP")
        assert int(row["unexplained_value_pence"]) == int(pence), d
        checked += 1
    assert checked, "no Standard/Average shrink or gain planted; the value check proved nothing"
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["stock_parity"]["policy/fulfilment_trigger"].value == "despatch"
    assert meta["valuation_deltas"]["unexplained_value_pence"].value == int(
        detail["unexplained_value_pence"].sum()
    )


def test_month_end_job_runs_as_at_the_month_end(pipeline: Pipeline) -> None:
    result = pipeline.run_job(jobs.month_end_job)
    assert result.success
    cutoffs = {r["cutoff"] for r in pipeline.query(core.stock_parity)}
    assert len(cutoffs) == 1
    stored = pd.Timestamp(cutoffs.pop())
    stored = stored.tz_localize("UTC") if stored.tzinfo is None else stored
    assert stored.to_pydatetime() == resolve_cutoff("month_end")
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"stock_parity", "valuation_deltas", "sync_exceptions"} <= materialized
    assert not materialized & {"order_manifests", "despatch_postings", "stock_adjustments"}
