"""Available stock as the WMS sees it, with Sage's free stock beside it for comparison.

available = WMS sellable level - open allocations (NEW .. PACKANDHOLD, i.e. anything not yet
despatched or cancelled). The WMS level already excludes quarantine, so quarantine never counts
as available. Sage's ``free_stock_available`` is shown next to it but never used to compute it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sage_wms_pipeline.domain.mapping import to_sage_keys
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.storage import schemas

# WMS statuses whose lines no longer hold stock: despatched lines have left the level already.
NOT_ALLOCATING = frozenset({"DESPATCHED", "CANCELLED", "INVOICED", "INVOICEDFAILED"})


def available_stock(
    wms_stock: pd.DataFrame,
    open_allocations: pd.DataFrame,
    policy: Policy,
    sage_holdings: pd.DataFrame | None = None,
    *,
    validate: bool = True,
) -> pd.DataFrame:
    """Per SKU and warehouse (Sage keys): WMS available in WMS and Sage units, and Sage free stock."""
    if validate:
        wms_stock = schemas.WmsStock.validate(wms_stock)
        open_allocations = schemas.OpenAllocations.validate(open_allocations)
        if sage_holdings is not None:
            sage_holdings = schemas.SageHoldings.validate(sage_holdings)

    live = open_allocations[~open_allocations["wms_status"].str.upper().isin(NOT_ALLOCATING)]
    alloc = (
        live.groupby(["wms_sku", "wms_warehouse_id"], sort=False, observed=True)["quantity_e5"]
        .sum()
        .rename("wms_allocated_e5")
        .reset_index()
    )
    df = wms_stock[["wms_sku", "wms_warehouse_id", "sellable_e5", "quarantine_e5"]].merge(
        alloc, on=["wms_sku", "wms_warehouse_id"], how="outer"
    )
    for col in ("sellable_e5", "quarantine_e5", "wms_allocated_e5"):
        df[col] = df[col].fillna(0).astype(np.int64)
    df["wms_available_e5"] = df["sellable_e5"] - df["wms_allocated_e5"]
    df["available_e5"] = df["wms_available_e5"]
    df = to_sage_keys(df, policy, ["available_e5"])
    df = df.rename(columns={"sellable_e5": "wms_sellable_e5", "quarantine_e5": "wms_quarantine_e5"})

    if sage_holdings is not None and len(sage_holdings):
        free = sage_holdings[["sku", "warehouse", "free_stock_e5"]].rename(
            columns={"free_stock_e5": "sage_free_stock_e5"}
        )
        df = df.merge(free, on=["sku", "warehouse"], how="left")
        df["sage_free_stock_e5"] = df["sage_free_stock_e5"].astype("Int64")
    else:
        df["sage_free_stock_e5"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df["difference_e5"] = df["available_e5"].astype("Int64") - df["sage_free_stock_e5"]
    cols = list(schemas.AvailableStock.to_schema().columns)
    return df[cols].reset_index(drop=True)
