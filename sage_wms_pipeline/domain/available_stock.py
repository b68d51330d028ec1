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


def _with_allocations(stock: pd.DataFrame, live: pd.DataFrame) -> pd.DataFrame:
    """stock + wms_allocated_e5 (summed open lines), plus rows for allocations with no stock row.

    Keys are factorised once into integers so the sum and the join run on int64, not strings."""
    n = len(stock)
    codes, uniq = pd.factorize(pd.concat([stock["wms_sku"], live["wms_sku"]], ignore_index=True))
    wh = np.concatenate(
        [stock["wms_warehouse_id"].to_numpy(np.int64), live["wms_warehouse_id"].to_numpy(np.int64)]
    )
    span = int(wh.max()) + 1 if len(wh) else 1
    key = codes.astype(np.int64) * span + wh
    stock_key = pd.Index(key[:n])
    if not stock_key.is_unique:
        raise ValueError("wms_stock: (wms_sku, wms_warehouse_id) must be unique")
    sums = pd.Series(live["quantity_e5"].to_numpy(np.int64)).groupby(key[n:], sort=False).sum()
    pos = stock_key.get_indexer(sums.index)
    allocated = np.zeros(n, dtype=np.int64)
    allocated[pos[pos >= 0]] = sums.to_numpy()[pos >= 0]
    out = stock.assign(wms_allocated_e5=allocated)
    orphan = sums[pos < 0]
    if len(orphan):
        k = orphan.index.to_numpy(np.int64)
        extra = pd.DataFrame(
            {
                "wms_sku": np.asarray(uniq, dtype=object)[k // span],
                "wms_warehouse_id": k % span,
                "sellable_e5": 0,
                "quarantine_e5": 0,
                "wms_allocated_e5": orphan.to_numpy(),
            }
        )
        out = pd.concat([out, extra], ignore_index=True)
    return out


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

    status = open_allocations["wms_status"]
    holding = [v for v in status.unique() if str(v).upper() not in NOT_ALLOCATING]
    live = open_allocations[status.isin(holding)]
    df = _with_allocations(wms_stock[["wms_sku", "wms_warehouse_id", "sellable_e5", "quarantine_e5"]], live)
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
    out = df[cols]
    out.index = pd.RangeIndex(len(out))  # relabel without copying
    return out
