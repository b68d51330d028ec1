"""The code location as Dagster loads it: every check on the asset it guards (blocking where it guards
finance outputs), the daily sync check running them all, sensors and schedules wired to real jobs,
and the month-end run config accepted by the month-end job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

import sage_wms_pipeline.definitions as code_location
from sage_wms_pipeline.defs import schedules

EXPECTED_CHECKS = {
    ("stock_parity", "inventory_drift"): False,
    ("stock_parity", "finance_gate"): True,
    ("stock_parity", "stock_parity_schema"): False,
    ("valuation_deltas", "valuation_drift"): False,
    ("valuation_deltas", "gx_data_contracts"): False,
    ("valuation_deltas", "valuation_deltas_schema"): False,
    ("valuation_deltas", "valuation_summary_schema"): False,
    ("available_stock", "free_stock_divergence"): False,
    ("available_stock", "available_stock_schema"): False,
    ("despatch_postings", "sync_illusion"): False,
    ("despatch_postings", "stuck_and_orphaned"): False,
    ("despatch_postings", "despatch_latency"): False,
    ("order_manifests", "manifest_totals"): False,
    ("sync_exceptions", "open_exceptions_by_owner"): False,
    ("sync_exceptions", "sync_exceptions_contract"): False,
    ("despatch_postings", "despatch_outbox_contract"): False,
    ("order_manifests", "order_manifests_contract"): False,
    ("sage_warehouse_holdings", "sage_holdings_contract"): False,
    ("wms_stock_levels", "wms_stock_contract"): False,
    ("sage_products", "sage_products_contract"): False,
    ("sage_sales_orders", "sage_order_lines_contract"): False,
    ("wms_orders", "wms_orders_contract"): False,
}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    loaded = dg.load_from_defs_folder(path_within_project=Path(code_location.__file__).parent)
    dg.Definitions.validate_loadable(loaded)
    return loaded


def test_every_check_guards_its_asset(defs):
    graph = defs.resolve_asset_graph()
    found = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        found[(key.asset_key.to_user_string(), key.name)] = spec.blocking
    mine = {k: v for k, v in found.items() if k in EXPECTED_CHECKS}
    assert mine == EXPECTED_CHECKS


def test_daily_sync_check_runs_every_check(defs):
    job = defs.resolve_job_def("sync_check_job")
    selected = {(k.asset_key.to_user_string(), k.name) for k in job.asset_layer.asset_graph.asset_check_keys}
    assert set(EXPECTED_CHECKS) <= selected


def test_sensors_and_schedules_target_the_contract_jobs(defs):
    targets = {
        s.name: s.job_name for s in defs.sensors if s.name in ("wms_despatch_sensor", "outbox_retry_sensor")
    }
    assert targets == {
        "wms_despatch_sensor": "despatch_posting_job",
        "outbox_retry_sensor": "despatch_posting_job",
    }
    assert {s.name for s in defs.sensors} >= {"run_failure_alert_sensor", "check_failure_alert_sensor"}
    for schedule in defs.schedules:
        assert defs.resolve_job_def(schedule.job_name) is not None


def test_month_end_run_config_is_valid_for_the_month_end_job(defs, monkeypatch):
    # Resource secrets resolve from the environment when config is validated; any value will do.
    for name in ("SAGE200_CLIENT_SECRET", "SAGE200_REFRESH_TOKEN", "MINTSOFT_PASSWORD"):
        monkeypatch.setenv(name, "not-a-real-secret")
    job = defs.resolve_job_def("month_end_job")
    request = schedules.month_end_close_schedule(
        dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 22, 30, tzinfo=UTC))
    )
    assert isinstance(request, dg.RunRequest)
    resolved = dg.validate_run_config(job, request.run_config)
    assert resolved["ops"]["stock_parity"]["config"]["cutoff"] == "2026-11-30T22:30:00Z"
    # The parity asset reads it as the intended instant.
    from sage_wms_pipeline.defs.finance.assets import resolve_cutoff

    assert resolve_cutoff("2026-11-30T22:30:00Z") == datetime(2026, 11, 30, 22, 30, tzinfo=UTC)
