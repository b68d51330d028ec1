"""Value each parity variance at Sage's valuation price, exact to the penny.

The price follows the item's costing method (set on its product group):

- Standard: standard cost; Average (and Actual, for want of batch costs): average buying price;
- FIFO: the remaining cost layers that make up stock on hand, walked layer by layer, newest
  first by default (policy ``fifo_variance_layers``); any quantity beyond the layers is valued
  at the last layer reached (or the average buying price when there are no layers).

Each line's value is computed exactly (qty × price at 10^-10 GBP) and rounded once, half away
from zero, to pence; the unexplained part is valued the same way and the explained part is the
difference, so explained + unexplained = total on every line. The summary adds up pence, so it
ties to the detail by construction, and that is checked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import e10_to_pence, mul_exact, value_pence
from sage_wms_pipeline.storage import schemas

KEY = ["sku", "warehouse"]
SUMMARY_KEY = ["warehouse", "product_group", "stock_nominal_code"]
UNPRICED = "Unpriced"
UNKNOWN = "(unknown)"


class ValuationError(ValueError):
    pass


def _fifo_values(
    rows: pd.DataFrame, qty_col: str, layers: pd.DataFrame, newest_first: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Value |qty| of each row from its layers; returns (signed value in 10^-10 GBP, first unit cost)."""
    n = len(rows)
    first_cost = rows["average_buying_price_e5"].to_numpy(dtype=np.int64).copy()
    last_cost = first_cost.copy()
    qty = rows[qty_col].to_numpy(dtype=np.int64)
    need = np.abs(qty)
    taken = np.zeros(n, dtype=np.int64)
    totals: np.ndarray = np.zeros(n, dtype=np.int64)
    want = pd.DataFrame(
        {
            "row": np.arange(n),
            "need": need,
            "sku": rows["sku"].to_numpy(),
            "warehouse": rows["warehouse"].to_numpy(),
        }
    )
    m = want[want["need"] > 0].merge(layers[[*KEY, "received_at", "quantity_e5", "unit_cost_e5"]], on=KEY)
    # Sort only the layers in play, by integer row then age: cheap even with many layers on file.
    m = m.sort_values(["row", "received_at"], ascending=[True, not newest_first], kind="stable")
    if len(m):
        layer_qty = m["quantity_e5"].to_numpy(dtype=np.int64)
        cum = m.groupby("row", sort=False)["quantity_e5"].cumsum().to_numpy(dtype=np.int64)
        take = np.clip(m["need"].to_numpy() - (cum - layer_qty), 0, layer_qty)
        m = m.assign(take=take, v=mul_exact(take, m["unit_cost_e5"].to_numpy(dtype=np.int64)))
        used = m[m["take"] > 0]
        g = used.groupby("row", sort=True)
        idx = g.size().index.to_numpy()
        first_cost[idx] = g["unit_cost_e5"].first().to_numpy()
        last_cost[idx] = g["unit_cost_e5"].last().to_numpy()
        taken[idx] = g["take"].sum().to_numpy()
        v = used["v"]
        # Sums of int64 products could still overflow; the float bound is only a guard.
        if v.dtype == object or float(np.abs(v.to_numpy(dtype=float)).sum()) >= 2**62:
            totals = totals.astype(object)
            sums = used.assign(v=v.astype(object)).groupby("row", sort=True)["v"].agg(lambda s: sum(s))
            totals[idx] = sums.to_numpy()
        else:
            totals[idx] = g["v"].sum().to_numpy()
    rest = mul_exact(need - taken, last_cost)
    if totals.dtype == object or rest.dtype == object:
        totals = totals.astype(object) + rest.astype(object)
    else:
        totals = totals + rest
    return totals * np.sign(qty), first_cost


def valuation_deltas(
    parity: pd.DataFrame,
    valuation_prices: pd.DataFrame,
    policy: Policy,
    fifo_layers: pd.DataFrame | None = None,
    *,
    validate: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(detail per SKU and warehouse, summary per warehouse × product group × nominal stock code)."""
    if validate:
        valuation_prices = schemas.ValuationPrices.validate(valuation_prices)
        if fifo_layers is not None:
            fifo_layers = schemas.FifoLayers.validate(fifo_layers)
    prices = valuation_prices.drop_duplicates("sku")
    df = parity[["cutoff", *KEY, "variance_e5", "explained_e5", "unexplained_e5"]].merge(
        prices, on="sku", how="left"
    )
    # No Sage price (e.g. an unmapped WMS SKU): valued at nil and flagged, never a failed run.
    df["priced"] = df["costing_method"].notna()
    df["costing_method"] = df["costing_method"].fillna(UNPRICED)
    for col in ("product_group", "stock_nominal_code"):
        df[col] = df[col].fillna(UNKNOWN)
    for col in ("standard_cost_e5", "average_buying_price_e5"):
        df[col] = df[col].fillna(0).astype(np.int64)

    method = df["costing_method"].to_numpy()
    unit = np.where(method == "Standard", df["standard_cost_e5"], df["average_buying_price_e5"])
    unit = unit.astype(np.int64)
    total = value_pence(df["variance_e5"], unit)
    unexplained = value_pence(df["unexplained_e5"], unit)

    fifo = method == "FIFO"
    if fifo.any():
        layers = (
            fifo_layers
            if fifo_layers is not None
            else pd.DataFrame(columns=[*KEY, "received_at", "quantity_e5", "unit_cost_e5"])
        )
        newest = policy.fifo_variance_layers == "newest_first"
        rows = df.loc[fifo].reset_index(drop=True)
        v_total, first = _fifo_values(rows, "variance_e5", layers, newest)
        v_unexp, _ = _fifo_values(rows, "unexplained_e5", layers, newest)
        total[fifo] = e10_to_pence(v_total)
        unexplained[fifo] = e10_to_pence(v_unexp)
        unit[fifo] = first

    df["unit_cost_e5"] = unit
    df["value_pence"] = total
    df["unexplained_value_pence"] = unexplained
    df["explained_value_pence"] = total - unexplained
    materiality_pence = int(policy.tolerances.value_materiality_gbp * 100)
    df["material"] = np.abs(unexplained) > materiality_pence

    detail = df[list(schemas.ValuationDetail.to_schema().columns)]
    detail.index = pd.RangeIndex(len(detail))  # relabel without copying
    summary = summarise(detail)
    check_tie_out(detail, summary)
    return detail, summary


def summarise(detail: pd.DataFrame) -> pd.DataFrame:
    d = detail.assign(
        abs_value_pence=detail["value_pence"].abs(),
        abs_explained_pence=detail["explained_value_pence"].abs(),
        abs_unexplained_pence=detail["unexplained_value_pence"].abs(),
    )
    out = d.groupby(SUMMARY_KEY, as_index=False, sort=True).agg(
        lines=("sku", "size"),
        net_value_pence=("value_pence", "sum"),
        abs_value_pence=("abs_value_pence", "sum"),
        net_explained_pence=("explained_value_pence", "sum"),
        abs_explained_pence=("abs_explained_pence", "sum"),
        net_unexplained_pence=("unexplained_value_pence", "sum"),
        abs_unexplained_pence=("abs_unexplained_pence", "sum"),
    )
    cutoff = detail["cutoff"].iloc[0] if len(detail) else pd.NaT
    out.insert(0, "cutoff", pd.Series([cutoff] * len(out), dtype="datetime64[ns, UTC]"))
    return out


def check_tie_out(detail: pd.DataFrame, summary: pd.DataFrame) -> None:
    """Raise unless the summary's totals equal the detail's, to the penny."""
    pairs = {
        "net_value_pence": detail["value_pence"].sum(),
        "abs_value_pence": detail["value_pence"].abs().sum(),
        "net_explained_pence": detail["explained_value_pence"].sum(),
        "net_unexplained_pence": detail["unexplained_value_pence"].sum(),
        "abs_unexplained_pence": detail["unexplained_value_pence"].abs().sum(),
    }
    for col, expected in pairs.items():
        got = int(summary[col].sum())
        if got != int(expected):
            raise ValuationError(
                f"valuation_summary.{col}: {got} pence does not tie to the detail's {int(expected)}"
            )
    if (detail["explained_value_pence"] + detail["unexplained_value_pence"] != detail["value_pence"]).any():
        raise ValuationError("valuation_deltas: explained + unexplained != value on some line")
