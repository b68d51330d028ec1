"""Pandera contracts of the operational tables and raw snapshots, each on the asset that writes it.

The derived tables (parity, valuation, available stock) are checked in `finance.py` against
`storage.schemas`; these cover the rest: the outbox, the exceptions, the manifests and the two stock
snapshots, so a broken row is reported with its column, rule and value instead of surfacing later
as a wrong number.
"""

from __future__ import annotations

import dagster as dg

from sage_wms_pipeline.defs.checks._support import read_table, result_from
from sage_wms_pipeline.defs.resources import ParityDatabase
from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.storage import tables

# table -> the asset that writes it
CONTRACT_ASSETS: dict[str, str] = {
    "despatch_outbox": "despatch_postings",
    "sync_exceptions": "sync_exceptions",
    "order_manifests": "order_manifests",
    "sage_holdings": "sage_warehouse_holdings",
    "wms_stock": "wms_stock_levels",
}


def _contract_check(table_name: str, asset: str) -> dg.AssetChecksDefinition:
    model = checks.OPERATIONAL_CONTRACTS[table_name]

    @dg.asset_check(
        asset=asset,
        name=f"{table_name}_contract",
        description=f"The stored {table_name} table against its pandera contract ({model.__name__}).",
    )
    def _check(parity_db: ParityDatabase) -> dg.AssetCheckResult:
        frame = read_table(parity_db.database().engine, tables.metadata.tables[table_name])
        return result_from(checks.pandera_contract(table_name, frame, model))

    return _check


contract_checks = [_contract_check(t, a) for t, a in CONTRACT_ASSETS.items()]
