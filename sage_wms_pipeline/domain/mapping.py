"""Vectorised translation of WMS keys (wms_sku, wms_warehouse_id) to Sage keys (sku, warehouse)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import div_round_half_up

UNMAPPED_WMS_SKU = "unmapped WMS SKU"
UNMAPPED_WMS_WAREHOUSE = "unmapped WMS warehouse"
UNMAPPED_SAGE_SKU = "unmapped Sage SKU"
UNMAPPED_SAGE_WAREHOUSE = "unmapped Sage warehouse"


def sku_frame(policy: Policy) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sku": [s.sage_code for s in policy.skus],
            "wms_sku": [s.wms_sku for s in policy.skus],
            "factor": np.array([s.wms_units_per_sage_unit for s in policy.skus], dtype=np.int64),
            "abc_class": [s.abc_class for s in policy.skus],
        }
    )


def warehouse_frame(policy: Policy) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "warehouse": [w.sage_name for w in policy.warehouses],
            "wms_warehouse_id": np.array([w.wms_warehouse_id for w in policy.warehouses], dtype=np.int64),
        }
    )


def _join_issue(a: pd.Series, b: pd.Series) -> pd.Series:
    both = a.notna() & b.notna()
    out = a.where(a.notna(), b)
    return out.where(~both, a.fillna("") + "; " + b.fillna(""))


def to_sage_keys(frame: pd.DataFrame, policy: Policy, qty_columns: list[str]) -> pd.DataFrame:
    """Add sku, warehouse, factor, abc_class, mapping_issue; convert qty_columns to Sage units (5 dp).

    An unmapped SKU falls back to the same code 1:1 when the policy allows it and the code is not
    the Sage side of another mapping; otherwise it keeps its WMS code and is flagged.
    """
    skus = sku_frame(policy)
    out = frame.merge(skus, on="wms_sku", how="left")
    missing = out["sku"].isna()
    if missing.any():
        claimed = out["wms_sku"].isin(skus["sku"])
        identity = missing & (policy.sku_identity_fallback & ~claimed)
        out.loc[missing, "sku"] = out.loc[missing, "wms_sku"]
        # A flagged code gets its own key so it never merges into a mapped product's row.
        out.loc[missing & ~identity, "sku"] = "WMS:" + out.loc[missing & ~identity, "wms_sku"]
        out.loc[missing, "factor"] = 1
        out["mapping_issue"] = pd.Series(
            np.where(missing & ~identity, UNMAPPED_WMS_SKU, None), index=out.index, dtype=object
        )
    else:
        out["mapping_issue"] = pd.Series(None, index=out.index, dtype=object)
    out["factor"] = out["factor"].astype(np.int64)

    whs = warehouse_frame(policy)
    out = out.merge(whs, on="wms_warehouse_id", how="left")
    wh_missing = out["warehouse"].isna()
    if wh_missing.any():
        out.loc[wh_missing, "warehouse"] = "WMS:" + out.loc[wh_missing, "wms_warehouse_id"].astype(str)
        issue = pd.Series(np.where(wh_missing, UNMAPPED_WMS_WAREHOUSE, None), index=out.index, dtype=object)
        out["mapping_issue"] = _join_issue(out["mapping_issue"], issue)

    factor = out["factor"].to_numpy()
    if (factor != 1).any():
        for col in qty_columns:
            out[col] = div_round_half_up(out[col].to_numpy(), factor).astype(np.int64)
    return out


def sage_mapping_issue(frame: pd.DataFrame, policy: Policy) -> pd.Series:
    """For Sage-keyed rows (sku, warehouse): why they cannot be matched to the WMS, else None."""
    skus = sku_frame(policy)
    whs = warehouse_frame(policy)
    if policy.sku_identity_fallback:
        # Identity works unless the code is only some other product's WMS SKU.
        claimed = set(skus["wms_sku"]) - set(skus["sku"])
        sku_known = ~frame["sku"].isin(claimed) if claimed else pd.Series(True, index=frame.index)
    else:
        sku_known = frame["sku"].isin(skus["sku"])
    wh_known = frame["warehouse"].isin(whs["warehouse"])
    a = pd.Series(np.where(sku_known, None, UNMAPPED_SAGE_SKU), index=frame.index, dtype=object)
    b = pd.Series(np.where(wh_known, None, UNMAPPED_SAGE_WAREHOUSE), index=frame.index, dtype=object)
    return _join_issue(a, b)
