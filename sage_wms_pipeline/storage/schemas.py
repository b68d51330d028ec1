"""The exact shape of every frame the reconciliation core reads and writes (pandera).

Scales (see ``sage_wms_pipeline.domain.units``): ``*_e5`` quantity columns are units × 10^5,
``*_cost_e5`` / ``*_price_e5`` are GBP × 10^5 per unit, ``*_pence`` are whole pence; all int64.
WMS-side quantities are in WMS units; everything keyed by ``sku``/``warehouse`` is in Sage units
under Sage names. Timestamps are timezone-aware UTC.

Input frames (the lead builds these from the API clients):
``WmsStock``, ``OpenAllocations``, ``SageHoldings``, ``ExplanationEvents``, ``ValuationPrices``,
``FifoLayers``. Output frames (written to the database): ``AvailableStock``, ``StockParity``,
``ValuationDetail``, ``ValuationSummary``.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

UtcTimestamp = Annotated[pd.DatetimeTZDtype, "ns", "UTC"]

EXPLANATION_KINDS = ("despatch_not_posted", "receipt_not_in_sage")
COSTING_METHODS = ("FIFO", "Average", "Standard", "Actual")
UNPRICED = "Unpriced"
ABC_CLASSES = ("A", "B", "C")


class _Frame(pa.DataFrameModel):
    class Config:
        strict = "filter"  # extra columns are dropped, not an error: API frames carry more
        coerce = True


# ---------------------------------------------------------------------------------- inputs
class WmsStock(_Frame):
    """WMS stock per SKU and warehouse (Mintsoft StockLevels): sellable_e5 = TotalStockLevel (physical
    sellable, picked-not-despatched included, allocations NOT deducted, quarantine excluded);
    quarantine_e5 = InQuarantine."""

    wms_sku: Series[str] = pa.Field(str_length={"min_value": 1})
    wms_warehouse_id: Series[int] = pa.Field(ge=1)
    sellable_e5: Series[int] = pa.Field(ge=0)
    quarantine_e5: Series[int] = pa.Field(ge=0)

    class Config:
        unique = ["wms_sku", "wms_warehouse_id"]  # noqa: RUF012


class OpenAllocations(_Frame):
    """Outstanding (not yet despatched) WMS order lines, in WMS units; any status."""

    order_number: Series[str]
    wms_sku: Series[str]
    wms_warehouse_id: Series[int] = pa.Field(ge=1)
    wms_status: Series[str]
    quantity_e5: Series[int] = pa.Field(ge=0)


class SageHoldings(_Frame):
    """Sage warehouse_holdings: quantity_in_stock (confirmed + unconfirmed) and free stock."""

    sku: Series[str] = pa.Field(str_length={"min_value": 1})
    warehouse: Series[str] = pa.Field(str_length={"min_value": 1})
    product_group: Series[str]
    quantity_in_stock_e5: Series[int]
    free_stock_e5: Series[int]

    class Config:
        unique = ["sku", "warehouse"]  # noqa: RUF012


class ExplanationEvents(_Frame):
    """Known timing items, one row per WMS movement, quantity in WMS units (>= 0).

    despatch_not_posted: despatched in the WMS at event_at, posted to Sage at sage_posted_at
    (NaT = not yet). receipt_not_in_sage: booked in at the WMS at event_at, in Sage at
    sage_posted_at. A row explains parity when event_at <= cut-off < sage_posted_at.
    """

    kind: Series[str] = pa.Field(isin=list(EXPLANATION_KINDS))
    reference: Series[str]
    wms_sku: Series[str]
    wms_warehouse_id: Series[int] = pa.Field(ge=1)
    quantity_e5: Series[int] = pa.Field(ge=0)
    event_at: Series[UtcTimestamp]
    sage_posted_at: Series[UtcTimestamp] = pa.Field(nullable=True)


class PreviousParity(_Frame):
    """The previous run's parity (only what ageing needs)."""

    sku: Series[str]
    warehouse: Series[str]
    first_seen: Series[UtcTimestamp] = pa.Field(nullable=True)


class ValuationPrices(_Frame):
    """Sage's valuation price per item: from the product and its product group."""

    sku: Series[str]
    product_group: Series[str]
    costing_method: Series[str] = pa.Field(isin=list(COSTING_METHODS))
    stock_nominal_code: Series[str]
    standard_cost_e5: Series[int] = pa.Field(ge=0)
    average_buying_price_e5: Series[int] = pa.Field(ge=0)

    class Config:
        unique = ["sku"]  # noqa: RUF012


class FifoLayers(_Frame):
    """Remaining FIFO cost layers that make up stock on hand, per SKU and warehouse (Sage units)."""

    sku: Series[str]
    warehouse: Series[str]
    received_at: Series[UtcTimestamp]
    quantity_e5: Series[int] = pa.Field(gt=0)
    unit_cost_e5: Series[int] = pa.Field(ge=0)


# --------------------------------------------------------------------------------- outputs
class AvailableStock(_Frame):
    sku: Series[str]
    warehouse: Series[str]
    wms_sku: Series[str]
    wms_warehouse_id: Series[int]
    wms_sellable_e5: Series[int]
    wms_quarantine_e5: Series[int]
    wms_allocated_e5: Series[int]
    wms_available_e5: Series[int] = pa.Field(description="WMS units: level - allocated")
    available_e5: Series[int] = pa.Field(description="Sage units")
    sage_free_stock_e5: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    difference_e5: Series[pd.Int64Dtype] = pa.Field(nullable=True, description="available - Sage free stock")

    class Config:
        unique = ["sku", "warehouse"]  # noqa: RUF012


class StockParity(_Frame):
    cutoff: Series[UtcTimestamp]
    sku: Series[str]
    warehouse: Series[str]
    product_group: Series[str] = pa.Field(nullable=True)
    abc_class: Series[str] = pa.Field(nullable=True)
    wms_sku: Series[str] = pa.Field(nullable=True)
    wms_warehouse_id: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    wms_qty_e5: Series[int]
    sage_qty_e5: Series[int]
    variance_e5: Series[int]
    in_flight_despatch_e5: Series[int] = pa.Field(le=0)
    receipts_not_in_sage_e5: Series[int] = pa.Field(ge=0)
    quarantine_e5: Series[int] = pa.Field(ge=0)
    mapping_e5: Series[int]
    explained_e5: Series[int]
    unexplained_e5: Series[int]
    tolerance_e5: Series[int] = pa.Field(ge=0)
    within_tolerance: Series[bool]
    mapping_issue: Series[str] = pa.Field(nullable=True)
    first_seen: Series[UtcTimestamp] = pa.Field(nullable=True)
    age_seconds: Series[int] = pa.Field(ge=0)

    class Config:
        unique = ["sku", "warehouse"]  # noqa: RUF012

    @pa.dataframe_check
    def explained_adds_up(cls, df: pd.DataFrame) -> pd.Series:
        parts = df["in_flight_despatch_e5"] + df["receipts_not_in_sage_e5"]
        parts = parts + df["quarantine_e5"] + df["mapping_e5"]
        total = df["explained_e5"] + df["unexplained_e5"]
        return (parts == df["explained_e5"]) & (total == df["variance_e5"])


class ValuationDetail(_Frame):
    cutoff: Series[UtcTimestamp]
    sku: Series[str]
    warehouse: Series[str]
    product_group: Series[str]
    costing_method: Series[str] = pa.Field(isin=[*COSTING_METHODS, UNPRICED])
    stock_nominal_code: Series[str]
    variance_e5: Series[int]
    explained_e5: Series[int]
    unexplained_e5: Series[int]
    unit_cost_e5: Series[int] = pa.Field(description="Standard/Average price; FIFO: first layer used")
    value_pence: Series[int]
    explained_value_pence: Series[int]
    unexplained_value_pence: Series[int]
    material: Series[bool]
    priced: Series[bool] = pa.Field(description="False: no Sage price found, valued at nil")

    class Config:
        unique = ["sku", "warehouse"]  # noqa: RUF012

    @pa.dataframe_check
    def values_add_up(cls, df: pd.DataFrame) -> pd.Series:
        return df["explained_value_pence"] + df["unexplained_value_pence"] == df["value_pence"]


class ValuationSummary(_Frame):
    cutoff: Series[UtcTimestamp]
    warehouse: Series[str]
    product_group: Series[str]
    stock_nominal_code: Series[str]
    lines: Series[int] = pa.Field(ge=0)
    net_value_pence: Series[int]
    abs_value_pence: Series[int] = pa.Field(ge=0)
    net_explained_pence: Series[int]
    abs_explained_pence: Series[int] = pa.Field(ge=0)
    net_unexplained_pence: Series[int]
    abs_unexplained_pence: Series[int] = pa.Field(ge=0)

    class Config:
        unique = ["warehouse", "product_group", "stock_nominal_code"]  # noqa: RUF012


# Which schema guards each table that replace_table writes.
TABLE_SCHEMAS: dict[str, type[_Frame]] = {
    "available_stock": AvailableStock,
    "stock_parity": StockParity,
    "valuation_deltas": ValuationDetail,
    "valuation_summary": ValuationSummary,
}
