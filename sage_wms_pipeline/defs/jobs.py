"""Jobs: the asset selections that schedules, sensors and people launch.

Audit jobs (stock parity, month end, sync check) never write to Sage or the WMS: they select the
finance assets and everything upstream of them EXCEPT the fulfilment group, so a parity run shows
what is in flight at the cut-off instead of posting it first.
"""

from __future__ import annotations

import dagster as dg

_fulfilment = dg.AssetSelection.groups("fulfilment")
_finance_keys = ["stock_parity", "valuation_deltas", "sync_exceptions"]

stock_availability_job = dg.define_asset_job(
    name="stock_availability_job",
    description="Refresh WMS stock and open orders, Sage holdings, and available stock.",
    selection=dg.AssetSelection.assets(
        "wms_stock_levels", "wms_orders", "sage_warehouse_holdings", "available_stock"
    ),
)

order_manifest_job = dg.define_asset_job(
    name="order_manifest_job",
    description="Send live Sage orders not yet in the WMS to the WMS (idempotent).",
    # sage_products is in the job so a fresh install can send orders without a parity run first.
    selection=dg.AssetSelection.assets("sage_products", "sage_sales_orders", "wms_orders", "order_manifests"),
)

despatch_posting_job = dg.define_asset_job(
    name="despatch_posting_job",
    description="Post WMS despatches (or orders at the pick/pack trigger) to Sage through the outbox, "
    "then read Sage's despatches back.",
    # The Sage order lines are read first, or a despatch of an order sent since the last manifest
    # run would look orphaned (no Sage line) until then.
    selection=dg.AssetSelection.assets(
        "wms_despatches", "wms_orders", "sage_sales_orders", "despatch_postings", "sage_despatches"
    ),
    # Its steps are small reads and one writer in sequence: in one process the run starts posting
    # seconds sooner than with a process per step, which is most of despatch latency after polling.
    executor_def=dg.in_process_executor,
)

stock_adjustment_job = dg.define_asset_job(
    name="stock_adjustment_job",
    description="WMS receipts, graded returns, write-offs and counts to Sage stocktakes or proposed "
    "adjustments, per the restock authority.",
    selection=dg.AssetSelection.assets(
        "wms_receipts", "wms_returns", "wms_stock_movements", "sage_products", "stock_adjustments"
    ),
)

_audit_selection = dg.AssetSelection.assets(*_finance_keys).upstream() - _fulfilment

stock_parity_job = dg.define_asset_job(
    name="stock_parity_job",
    description="Ingest both sides, then parity, valuation deltas and sync exceptions as at `cutoff` "
    "(default now).",
    selection=_audit_selection,
)

month_end_job = dg.define_asset_job(
    name="month_end_job",
    description=(
        "Stock parity and valuation as at the month end. `cutoff` defaults to `month_end`: the end of "
        "today if it is the last day of the month, else the end of the previous month."
    ),
    selection=_audit_selection,
    config={"ops": {"stock_parity": {"config": {"cutoff": "month_end"}}}},
    tags={"sage_wms/close": "month_end"},
)

sync_check_job = dg.define_asset_job(
    name="sync_check_job",
    description="Recompute sync exceptions and run every asset check.",
    selection=dg.AssetSelection.assets("sync_exceptions") | dg.AssetSelection.all_asset_checks(),
)
