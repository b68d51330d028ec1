"""Pandera contracts of the operational tables and raw snapshots, each on the asset that writes it.

The derived tables (parity, valuation, available stock) are checked in `finance.py` against
`storage.schemas`; these cover the rest: the outbox, the exceptions, the manifests, the stock
snapshots, Sage products and order lines, and WMS orders. A broken row is reported with its
column, rule and value instead of surfacing later as a wrong number.
"""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from sage_wms_pipeline.defs.checks._support import read_table, result_from
from sage_wms_pipeline.defs.resources import ParityDatabase
from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables

# table -> the asset that writes it
CONTRACT_ASSETS: dict[str, str] = {
    "sage_products": "sage_products",
    "sage_order_lines": "sage_sales_orders",
    "wms_orders": "wms_orders",
    "despatch_outbox": "despatch_postings",
    "sync_exceptions": "sync_exceptions",
    "order_manifests": "order_manifests",
    "sage_holdings": "sage_warehouse_holdings",
    "wms_stock": "wms_stock_levels",
}


def _table(name: str) -> sa.Table:
    # Core tables live in storage.tables; the incremental ingest keeps its own in storage.ingest_tables.
    core = tables.metadata.tables.get(name)
    return core if core is not None else store.metadata.tables[name]


def _contract_check(table_name: str, asset: str) -> dg.AssetChecksDefinition:
    model = checks.OPERATIONAL_CONTRACTS[table_name]

    @dg.asset_check(
        asset=asset,
        name=f"{table_name}_contract",
        description=f"The stored {table_name} table against its pandera contract ({model.__name__}).",
    )
    def _check(parity_db: ParityDatabase) -> dg.AssetCheckResult:
        frame = read_table(parity_db.database().engine, _table(table_name))
        return result_from(checks.pandera_contract(table_name, frame, model))

    return _check


contract_checks = [_contract_check(t, a) for t, a in CONTRACT_ASSETS.items()]
