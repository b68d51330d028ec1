"""Checks on the finance assets: inventory and valuation drift, free stock, data contracts, and the
gate that keeps the month-end figures off failing parity.

The drift checks report honestly (WARN or ERROR by policy) and do not block. Blocking is done by one
check, `stock_parity › finance_gate`: in a run that rebuilds stock_parity, material drift fails it
and Dagster skips everything downstream (valuation, exceptions), so no month-end figures are built
on failing parity. In a run that did not rebuild parity (the daily sync check runs every check
against the stored tables) the gate passes: nothing is being built from a new parity there, and
the morning's exceptions digest must not be lost to a blocked run.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition.
import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from sage_wms_pipeline.defs.checks._support import read_table, result_from, to_e5
from sage_wms_pipeline.defs.resources import ParityDatabase, PolicyResource
from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.domain.units import value_pence
from sage_wms_pipeline.storage import schemas, tables

KEY = ["sku", "warehouse"]


def parity_with_values(engine: sa.Engine, parity: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Parity lines with their unexplained value, and where that value came from.

    valuation_deltas is downstream of parity, so while this check runs it may still hold the
    previous cut-off; then each line is valued at Sage's standard cost (Standard items) or average
    buying price (the rest), as close as severity needs. Exact FIFO values arrive with valuation.
    """
    if parity.empty:
        return parity.assign(unexplained_value_pence=pd.Series(dtype="int64")), "no lines"
    detail = read_table(engine, tables.valuation_deltas)
    cut = parity["cutoff"].iloc[0]
    if not detail.empty and (detail["cutoff"] == cut).all() and len(detail) >= len(parity):
        merged = parity.merge(detail[[*KEY, "unexplained_value_pence"]], on=KEY, how="left")
        return merged, "valuation_deltas (same cut-off)"
    products = read_table(engine, tables.sage_products)
    if products.empty:
        return parity, "none (no Sage products ingested)"
    unit = pd.Series(
        np.where(
            products["costing_method"] == "Standard",
            to_e5(products["standard_cost"]),
            to_e5(products["average_buying_price"]),
        ),
        index=products["sku"],
    )
    price = parity["sku"].map(unit).fillna(0).astype("int64")
    values = value_pence(parity["unexplained_e5"].astype("int64"), price)
    return parity.assign(unexplained_value_pence=values), "Sage standard cost / average buying price"


@dg.asset_check(
    asset="stock_parity",
    name="inventory_drift",
    description=(
        "SKU-warehouse lines whose unexplained variance is outside the policy tolerance. WARN; ERROR "
        "when a line's unexplained value exceeds the value materiality (finance_gate then blocks)."
    ),
)
def inventory_drift(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    finding, source = _drift(parity_db, policy)
    return result_from(finding, {"valued_from": source})


def _drift(parity_db: ParityDatabase, policy: PolicyResource) -> tuple[checks.Finding, str]:
    db = parity_db.database()
    valued, source = parity_with_values(db.engine, db.read_table("stock_parity"))
    return checks.inventory_drift(valued, checks.Thresholds.from_policy(policy.load())), source


def rebuilt_in_this_run(context: dg.AssetCheckExecutionContext, asset: str) -> bool:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event is not None and event.run_id == context.run.run_id


@dg.asset_check(
    asset="stock_parity",
    name="finance_gate",
    blocking=True,
    description=(
        "Blocks valuation and everything else downstream of stock_parity in a run that rebuilt parity "
        "with material unexplained drift (inventory_drift at ERROR). Passes in runs that did not rebuild it."
    ),
)
def finance_gate(
    context: dg.AssetCheckExecutionContext, parity_db: ParityDatabase, policy: PolicyResource
) -> dg.AssetCheckResult:
    if not rebuilt_in_this_run(context, "stock_parity"):
        note = "stock_parity was not rebuilt in this run: nothing downstream is built from a new parity"
        return dg.AssetCheckResult(passed=True, description=note, metadata={"summary": note, "gated": False})
    finding, _ = _drift(parity_db, policy)
    material = int(finding.figures["material_lines"])
    summary = (
        f"parity rebuilt with {material} material line(s): downstream finance figures not built"
        if material
        else "parity rebuilt with no material drift: downstream may build"
    )
    metadata: dict[str, object] = {"summary": summary, "gated": True, "material_lines": material}
    if material:
        # Rows come largest value first, so the material lines lead.
        metadata["rows_at_fault"] = dg.MetadataValue.md(
            checks.markdown_table(finding.rows.head(material), finding.row_limit)
        )
        metadata["records"] = dg.MetadataValue.json(list(finding.records[: min(material, 50)]))
    return dg.AssetCheckResult(
        passed=material == 0, severity=dg.AssetCheckSeverity.ERROR, description=summary, metadata=metadata
    )


@dg.asset_check(
    asset="valuation_deltas",
    name="valuation_drift",
    description=(
        "Unexplained value, net and absolute. WARN when any; ERROR when the absolute total exceeds "
        "materiality."
    ),
)
def valuation_drift(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    detail = parity_db.database().read_table("valuation_deltas")
    finding = checks.valuation_drift(detail, checks.Thresholds.from_policy(policy.load()))
    return result_from(finding)


@dg.asset_check(
    asset="available_stock",
    name="free_stock_divergence",
    description=(
        "Where Sage's free stock differs from the computed available stock, and by how much. WARN; "
        "ERROR where Sage offers free stock the warehouse cannot ship (oversell risk)."
    ),
)
def free_stock_divergence(parity_db: ParityDatabase, policy: PolicyResource) -> dg.AssetCheckResult:
    available = parity_db.database().read_table("available_stock")
    finding = checks.free_stock_divergence(available, checks.Thresholds.from_policy(policy.load()))
    return result_from(finding)


@dg.asset_check(
    asset="valuation_deltas",
    name="gx_data_contracts",
    description=(
        "Great Expectations suite over stock_parity, valuation_deltas and valuation_summary: non-null "
        "keys, one row per SKU and warehouse, summary totals that tie to the detail to the penny."
    ),
)
def gx_data_contracts(parity_db: ParityDatabase) -> dg.AssetCheckResult:
    db = parity_db.database()
    finding = checks.gx_data_contracts(
        db.read_table("stock_parity"), db.read_table("valuation_deltas"), db.read_table("valuation_summary")
    )
    return result_from(finding)


# Which asset writes each table that has a pandera schema.
TABLE_ASSETS: dict[str, str] = {
    "available_stock": "available_stock",
    "stock_parity": "stock_parity",
    "valuation_deltas": "valuation_deltas",
    "valuation_summary": "valuation_deltas",
}


def _schema_check(table_name: str, asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name=f"{table_name}_schema",
        description=f"The stored {table_name} table against its pandera schema (every failure case listed).",
    )
    def _check(parity_db: ParityDatabase) -> dg.AssetCheckResult:
        frame = parity_db.database().read_table(table_name)
        finding = checks.pandera_contract(table_name, frame, schemas.TABLE_SCHEMAS[table_name])
        return result_from(finding)

    return _check


schema_checks = [_schema_check(t, a) for t, a in TABLE_ASSETS.items() if t in schemas.TABLE_SCHEMAS]
