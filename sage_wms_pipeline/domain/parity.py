"""Physical stock parity: WMS quantity against Sage quantity in stock, per SKU and warehouse.

Sign convention: variance = WMS - Sage, in Sage units (positive = surplus, Sage understates).
The variance is explained by cause, and what is left is unexplained:

- in_flight_despatch (timing, <= 0): despatched in the WMS by the cut-off, not yet posted to Sage;
- receipts_not_in_sage (timing, >= 0): booked in at the WMS by the cut-off, not yet in Sage;
- quarantine (status, >= 0): returns held in WMS quarantine; the WMS quantity is sellable level
  plus quarantine (physical), and Sage does not hold them until the restock decision;
- mapping: where the WMS counts smaller units (``wms_units_per_sage_unit`` > 1), the loose WMS
  units that do not make a whole Sage unit (a broken pack); and the whole remaining variance of
  a row whose SKU or warehouse is not mapped, so it is not mistaken for shrink;
- unexplained = variance - explained: true shrink or gain.

Quantities are int64 × 10^5 throughout (see ``domain.units``); WMS quantities are converted to
Sage units rounded half up at 5 dp, the precision Sage itself holds.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from sage_wms_pipeline.domain.mapping import sage_mapping_issue, sku_frame, to_sage_keys
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import QTY_SCALE, div_round_half_up
from sage_wms_pipeline.storage import schemas

KEY = ["sku", "warehouse"]
_PCT_SCALE = 1000  # tolerance percent held as thousandths of a percent
_PCT_DENOM = 100 * _PCT_SCALE


def _utc(ts: datetime | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _explanations(events: pd.DataFrame, policy: Policy, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Timing items open at the cut-off, summed per Sage key, signed WMS - Sage."""
    open_at_cutoff = (events["event_at"] <= cutoff) & (
        events["sage_posted_at"].isna() | (events["sage_posted_at"] > cutoff)
    )
    ev = events.loc[open_at_cutoff, ["kind", "wms_sku", "wms_warehouse_id", "quantity_e5"]]
    # Sum before converting so a despatch split across lines converts once.
    ev = ev.groupby(["kind", "wms_sku", "wms_warehouse_id"], as_index=False, sort=False)["quantity_e5"].sum()
    ev = to_sage_keys(ev, policy, ["quantity_e5"])
    signed = np.where(ev["kind"].to_numpy() == "despatch_not_posted", -1, 1) * ev["quantity_e5"].to_numpy()
    ev = ev.assign(q=signed)
    wide = ev.pivot_table(index=KEY, columns="kind", values="q", aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=["despatch_not_posted", "receipt_not_in_sage"], fill_value=0)
    wide.columns = ["in_flight_despatch_e5", "receipts_not_in_sage_e5"]
    return wide.reset_index()


def _attach_explanations(df: pd.DataFrame, ev: pd.DataFrame | None) -> pd.DataFrame:
    """Full join of the (few) explanation rows onto the (many) stock rows, touching only rows whose
    SKU has an explanation: a cheap one-column filter instead of a join over every row."""
    cols = ["in_flight_despatch_e5", "receipts_not_in_sage_e5"]
    df.index = pd.RangeIndex(len(df))  # relabel without copying
    for c in cols:
        df[c] = np.zeros(len(df), dtype=np.int64)
    if ev is None or not len(ev):
        return df
    cand = df.loc[df["sku"].isin(ev["sku"].unique()), KEY].reset_index(names="_row")
    hit = cand.merge(ev, on=KEY, how="inner")
    rows = hit["_row"].to_numpy()
    for c in cols:
        df.loc[rows, c] = hit[c].to_numpy(dtype=np.int64)
    only_ev = ev.merge(hit[KEY], on=KEY, how="left", indicator=True)
    only_ev = only_ev[only_ev["_merge"] == "left_only"].drop(columns="_merge")
    if len(only_ev):
        df = pd.concat([df, only_ev], ignore_index=True)
    return df


def _tolerance_e5(df: pd.DataFrame, policy: Policy) -> np.ndarray:
    """Per-row tolerance in e5 units: max(abs_units, floor(percent% × |Sage qty|))."""
    t = policy.tolerances

    def scaled(rule_abs: object, rule_pct: object) -> tuple[int, int]:
        return int(rule_abs * 10**5), int(rule_pct * _PCT_SCALE)  # type: ignore[operator]

    d_abs, d_pct = scaled(t.default.abs_units, t.default.percent)
    abs_e5 = np.full(len(df), d_abs, dtype=np.int64)
    pct = np.full(len(df), d_pct, dtype=np.int64)
    for col, rules in (("abc_class", t.by_abc_class), ("product_group", t.by_product_group)):
        # Product group applied last so it wins over ABC class.
        for key, rule in rules.items():
            hit = (df[col] == key).to_numpy()
            a, p = scaled(rule.abs_units, rule.percent)
            abs_e5[hit] = a
            pct[hit] = p
    by_pct = (np.abs(df["sage_qty_e5"].to_numpy()) * pct) // _PCT_DENOM
    return np.maximum(abs_e5, by_pct)


def stock_parity(
    wms_stock: pd.DataFrame,
    sage_holdings: pd.DataFrame,
    explanations: pd.DataFrame,
    policy: Policy,
    cutoff: datetime | pd.Timestamp,
    previous: pd.DataFrame | None = None,
    *,
    validate: bool = True,
) -> pd.DataFrame:
    """Parity per SKU and warehouse as at ``cutoff`` (frames per ``storage.schemas``).

    ``previous`` is the last parity table (sku, warehouse, first_seen): a difference that was
    already standing keeps its first_seen, so its age grows run by run.
    """
    cut = _utc(cutoff)
    if validate:
        wms_stock = schemas.WmsStock.validate(wms_stock)
        sage_holdings = schemas.SageHoldings.validate(sage_holdings)
        explanations = schemas.ExplanationEvents.validate(explanations)
        if previous is not None:
            previous = schemas.PreviousParity.validate(previous)

    wms = wms_stock[["wms_sku", "wms_warehouse_id", "sellable_e5", "quarantine_e5"]]
    wms = to_sage_keys(wms, policy, [])
    factor = wms["factor"].to_numpy()
    physical = (wms["sellable_e5"] + wms["quarantine_e5"]).to_numpy()
    # Whole Sage units, plus the loose WMS units that do not make one (a broken pack): the
    # latter is a UoM (mapping) difference, not shrink.
    per_unit = factor * QTY_SCALE
    whole = physical // per_unit
    loose = div_round_half_up(physical - whole * per_unit, factor)
    wms["wms_qty_e5"] = whole * QTY_SCALE + loose
    wms["uom_e5"] = np.where(factor > 1, loose, 0)
    wms["quarantine_e5"] = div_round_half_up(wms["quarantine_e5"].to_numpy(), factor)
    wms = wms.drop(columns=["sellable_e5", "factor"]).rename(columns={"mapping_issue": "wms_issue"})
    if wms.duplicated(KEY).any():
        # Two WMS SKUs mapped onto one Sage product and warehouse: add them up.
        wms = wms.groupby(KEY, as_index=False, sort=False).agg(
            wms_sku=("wms_sku", "first"),
            wms_warehouse_id=("wms_warehouse_id", "first"),
            abc_class=("abc_class", "first"),
            wms_issue=("wms_issue", "first"),
            quarantine_e5=("quarantine_e5", "sum"),
            wms_qty_e5=("wms_qty_e5", "sum"),
            uom_e5=("uom_e5", "sum"),
        )

    sage = sage_holdings[["sku", "warehouse", "product_group", "quantity_in_stock_e5"]].rename(
        columns={"quantity_in_stock_e5": "sage_qty_e5"}
    )
    sage = sage.assign(sage_issue=sage_mapping_issue(sage, policy))

    df = wms.merge(sage, on=KEY, how="outer")
    df = _attach_explanations(df, _explanations(explanations, policy, cut) if len(explanations) else None)

    int_cols = [
        "wms_qty_e5",
        "sage_qty_e5",
        "quarantine_e5",
        "uom_e5",
        "in_flight_despatch_e5",
        "receipts_not_in_sage_e5",
    ]
    for col in int_cols:
        df[col] = df[col].fillna(0).astype(np.int64)
    # ABC class for rows only Sage (or only an explanation) knows about.
    abc = sku_frame(policy).dropna(subset=["abc_class"]).drop_duplicates("sku").set_index("sku")["abc_class"]
    no_wms = (df["abc_class"].isna() & df["wms_sku"].isna()).to_numpy()
    if len(abc) and no_wms.any():
        df.loc[no_wms, "abc_class"] = df.loc[no_wms, "sku"].map(abc)
    df["mapping_issue"] = df["wms_issue"].where(df["wms_issue"].notna(), df["sage_issue"])

    df["variance_e5"] = df["wms_qty_e5"] - df["sage_qty_e5"]
    known = df["in_flight_despatch_e5"] + df["receipts_not_in_sage_e5"] + df["quarantine_e5"]
    unmatched = df["mapping_issue"].notna().to_numpy()
    df["mapping_e5"] = np.where(unmatched, df["variance_e5"] - known, df["uom_e5"]).astype(np.int64)
    df["explained_e5"] = known + df["mapping_e5"]
    df["unexplained_e5"] = df["variance_e5"] - df["explained_e5"]
    df["tolerance_e5"] = _tolerance_e5(df, policy)
    df["within_tolerance"] = np.abs(df["unexplained_e5"].to_numpy()) <= df["tolerance_e5"].to_numpy()

    standing = df["variance_e5"].to_numpy() != 0
    first_seen = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    if previous is not None and len(previous):
        prev = previous[[*KEY, "first_seen"]].drop_duplicates(KEY)
        first_seen = df[KEY].merge(prev, on=KEY, how="left")["first_seen"]
        first_seen.index = df.index
    first_seen = first_seen.where(first_seen.notna() & (first_seen <= cut), cut)
    df["first_seen"] = first_seen.where(standing, pd.NaT)
    age = (cut - df["first_seen"]).dt.total_seconds()
    df["age_seconds"] = age.fillna(0).astype(np.int64)
    df["cutoff"] = pd.Series(cut, index=df.index).astype("datetime64[ns, UTC]")
    df["first_seen"] = df["first_seen"].astype("datetime64[ns, UTC]")
    df["wms_warehouse_id"] = df["wms_warehouse_id"].astype("Int64")

    cols = list(schemas.StockParity.to_schema().columns)
    out = df[cols]
    out.index = pd.RangeIndex(len(out))  # relabel without copying
    return out
