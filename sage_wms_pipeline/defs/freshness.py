"""Freshness policies for the asset graph, so stale data shows as such in the UI.

Import these where assets are defined (`@dg.asset(freshness_policy=WMS_INGEST_FRESHNESS)`) or map
them over specs; `FRESHNESS_BY_ASSET` names the intended policy for each asset key of the contract.
Windows follow the schedules in `schedules.py`: stock and manifests refresh every few minutes, the
despatch sensor polls every minute, parity runs daily (weekly audit, month-end close on top).
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

# The operational feeds: refreshed every 5 minutes; after 30 min something is wrong.
WMS_INGEST_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=15)
)
SAGE_INGEST_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=15)
)
# Sage master data (products, prices) moves slowly; the daily sync check refreshes it.
SAGE_MASTER_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)
)
FULFILMENT_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=30), warn_window=timedelta(minutes=15)
)
# Finance tables: at least daily (the 05:30 UTC sync check), with two hours' grace.
FINANCE_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)
)
AVAILABILITY_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=20), warn_window=timedelta(minutes=10)
)

FRESHNESS_BY_ASSET: dict[str, dg.FreshnessPolicy] = {
    "sage_products": SAGE_MASTER_FRESHNESS,
    "sage_warehouse_holdings": SAGE_INGEST_FRESHNESS,
    "sage_sales_orders": SAGE_INGEST_FRESHNESS,
    "sage_despatches": SAGE_INGEST_FRESHNESS,
    "wms_orders": WMS_INGEST_FRESHNESS,
    "wms_despatches": WMS_INGEST_FRESHNESS,
    "wms_stock_levels": WMS_INGEST_FRESHNESS,
    "wms_stock_movements": FINANCE_FRESHNESS,
    "wms_returns": FINANCE_FRESHNESS,
    "wms_receipts": FINANCE_FRESHNESS,
    "order_manifests": FULFILMENT_FRESHNESS,
    "despatch_postings": FULFILMENT_FRESHNESS,
    "available_stock": AVAILABILITY_FRESHNESS,
    "stock_parity": FINANCE_FRESHNESS,
    "valuation_deltas": FINANCE_FRESHNESS,
    "sync_exceptions": FINANCE_FRESHNESS,
}


def freshness_for(asset_name: str) -> dg.FreshnessPolicy | None:
    return FRESHNESS_BY_ASSET.get(asset_name)
