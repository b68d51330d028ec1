"""Freshness policies for the asset graph, so stale data shows as such in the UI.

The assets take theirs with `freshness_policy=freshness_for("<asset name>")`. Each window follows
what refreshes the asset (see `schedules.py` and `sensors/`):

- every 5 minutes (stock_availability_job, order_manifest_job): WMS stock and orders, Sage holdings
  and sales orders, available stock, order manifests: warn after 15 min, fail after 30 min;
- the despatch sensor (despatch_posting_job, whenever the WMS despatches): despatch feeds and
  postings: quiet nights are normal, so warn after 12 h, fail after 24 h;
- the daily sync check (05:30 UTC): sync exceptions: warn after 25 h, fail after 26 h;
- the weekly parity audit (Mondays 06:00 UTC) and month-end close: parity, valuation and the feeds
  only they read (Sage products, WMS movements, returns, receipts): warn after 7 days 2 h, fail after 8 days.

Assets no schedule or sensor materializes (stock_adjustments today) get none, rather than a policy
that would always fail.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

EVERY_FEW_MINUTES = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=15)
)
ON_DESPATCH = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=24), warn_window=timedelta(hours=12))
DAILY = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25))
WEEKLY = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=2))

FRESHNESS_BY_ASSET: dict[str, dg.FreshnessPolicy] = {
    "wms_stock_levels": EVERY_FEW_MINUTES,
    "wms_orders": EVERY_FEW_MINUTES,
    "sage_warehouse_holdings": EVERY_FEW_MINUTES,
    "sage_sales_orders": EVERY_FEW_MINUTES,
    "available_stock": EVERY_FEW_MINUTES,
    "order_manifests": EVERY_FEW_MINUTES,
    "wms_despatches": ON_DESPATCH,
    "despatch_postings": ON_DESPATCH,
    "sage_despatches": ON_DESPATCH,
    "sync_exceptions": DAILY,
    "sage_products": WEEKLY,
    "wms_stock_movements": WEEKLY,
    "wms_returns": WEEKLY,
    "wms_receipts": WEEKLY,
    "stock_parity": WEEKLY,
    "valuation_deltas": WEEKLY,
}


def freshness_for(asset_name: str) -> dg.FreshnessPolicy | None:
    return FRESHNESS_BY_ASSET.get(asset_name)
