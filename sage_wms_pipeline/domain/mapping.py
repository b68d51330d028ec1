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


def _resolve_wms_skus(uniq: np.ndarray, policy: Policy) -> pd.DataFrame:
    """For distinct WMS SKUs: Sage sku, factor, abc_class, issue (None when mapped)."""
    skus = sku_frame(policy)
    u = pd.DataFrame({"wms_sku": uniq}).merge(skus, on="wms_sku", how="left")
    missing = u["sku"].isna().to_numpy()
    issue = np.full(len(u), None, dtype=object)
    if missing.any():
        claimed = u["wms_sku"].isin(skus["sku"]).to_numpy()
        flagged = missing & ~(policy.sku_identity_fallback & ~claimed)
        sku = u["sku"].to_numpy(dtype=object).copy()
        sku[missing] = u["wms_sku"].to_numpy(dtype=object)[missing]
        # A flagged code gets its own key so it never merges into a mapped product's row.
        sku[flagged] = "WMS:" + u["wms_sku"].to_numpy(dtype=object)[flagged]
        u["sku"] = sku
        u["factor"] = u["factor"].fillna(1)
        issue[flagged] = UNMAPPED_WMS_SKU
    u["factor"] = u["factor"].astype(np.int64)
    u["mapping_issue"] = issue
    return u


def to_sage_keys(frame: pd.DataFrame, policy: Policy, qty_columns: list[str]) -> pd.DataFrame:
    """Add sku, warehouse, factor, abc_class, mapping_issue; convert qty_columns to Sage units (5 dp).

    An unmapped SKU falls back to the same code 1:1 when the policy allows it and the code is not
    the Sage side of another mapping; otherwise it keeps its WMS code and is flagged.
    """
    # Resolve each distinct code once, then spread by integer position: no per-row string joins.
    codes, uniq = pd.factorize(frame["wms_sku"])
    u = _resolve_wms_skus(np.asarray(uniq, dtype=object), policy)
    out = frame.copy(deep=False)  # new columns only; the caller's frame is untouched
    for col in ("sku", "factor", "abc_class", "mapping_issue"):
        out[col] = u[col].to_numpy()[codes]

    wh_codes, wh_uniq = pd.factorize(frame["wms_warehouse_id"])
    names = {w.wms_warehouse_id: w.sage_name for w in policy.warehouses}
    wh_names = np.array([names.get(int(w), f"WMS:{int(w)}") for w in wh_uniq], dtype=object)
    out["warehouse"] = wh_names[wh_codes] if len(wh_names) else np.array([], dtype=object)
    unknown = np.array([int(w) not in names for w in wh_uniq], dtype=bool)
    if unknown.any():
        wh_missing = unknown[wh_codes]
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
