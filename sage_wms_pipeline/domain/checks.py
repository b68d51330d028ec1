"""What the integration's checks judge: plain functions over DataFrames, no Dagster here.

Each function takes the frames a check reads (columns named below; quantities as int ×10^5 in
``*_e5`` columns, money as int pence in ``*_pence`` columns, per `domain.units`) and returns a
`Finding`: passed or not, a severity chosen by the policy's thresholds, figures worth plotting, and
the rows at fault worst first, so a person can act on the check without opening a database.

Severity rules (all thresholds from `domain.policy.Policy`):

- inventory drift: lines whose unexplained variance is outside tolerance fail; ERROR when one of
  them is material (its unexplained value exceeds ``tolerances.value_materiality_gbp``, the same
  per-line test as ``valuation_deltas.material``), else WARN.
- valuation drift: any unexplained value fails; ERROR once its absolute total exceeds materiality.
- sync illusion: orders despatched in the WMS and still open in Sage past ``despatch_sla_hours``
  fail with WARN; ERROR once one has waited ``SYNC_ESCALATION_MULTIPLE`` times the SLA.
- stuck and orphaned: a stuck outbox row, an orphaned shipment or a status refusal is ERROR (only a
  person can clear it); rows still retrying past the lock deadline are WARN.
- manifest totals: any order whose manifest + excluded lines differs from the Sage total is ERROR
  (the WMS would ship a different order from the one invoiced).
- free stock: divergence is informational (WARN), except ERROR where Sage offers free stock the
  warehouse cannot ship (computed available <= 0): that is how orders get oversold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from sage_wms_pipeline.domain.units import PENCE_PER_GBP, QTY_SCALE

Severity = Literal["WARN", "ERROR"]

# How many rows at fault a check lists; counts and totals always cover all of them.
DEFAULT_ROW_LIMIT = 20
SYNC_ESCALATION_MULTIPLE = 2


class CheckInputError(ValueError):
    """A frame handed to a check lacks a column or holds an unusable value; names frame and column."""


@dataclass(frozen=True)
class Thresholds:
    """The policy numbers the checks judge against, in the checks' units."""

    materiality_pence: int
    sync_sla: timedelta
    lock_deadline: timedelta
    free_stock_tolerance_e5: int = 0
    row_limit: int = DEFAULT_ROW_LIMIT
    latency_target: timedelta = timedelta(minutes=2)

    @classmethod
    def from_policy(cls, policy: Any, *, row_limit: int = DEFAULT_ROW_LIMIT) -> Thresholds:
        """From a `domain.policy.Policy` (typed loosely so this module needs no pydantic import)."""
        sla_seconds = Decimal(policy.despatch_sla_hours) * 3600
        return cls(
            materiality_pence=int(Decimal(policy.tolerances.value_materiality_gbp) * PENCE_PER_GBP),
            sync_sla=timedelta(seconds=int(sla_seconds)),
            lock_deadline=timedelta(minutes=int(policy.lock_deadline_minutes)),
            row_limit=row_limit,
            latency_target=timedelta(seconds=int(policy.despatch_latency_target_seconds)),
        )


@dataclass(frozen=True)
class Finding:
    """One check's verdict. `records` names what is at fault (order numbers, SKU@warehouse, ids)."""

    check: str
    passed: bool
    severity: Severity
    summary: str
    # Figures feed Dagster's metadata plots only (floats there are display values, never computed
    # with); exact amounts are in `summary` and `rows`.
    figures: Mapping[str, int | float | str] = field(default_factory=dict)
    # The first rows at fault (at most row_limit, worst first); rows_total counts all of them.
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    records: tuple[str, ...] = ()
    row_limit: int = DEFAULT_ROW_LIMIT
    rows_total: int | None = None

    def rows_markdown(self) -> str:
        """The first rows at fault as a markdown table (empty string when nothing is at fault)."""
        return markdown_table(self.rows, self.row_limit, total=self.rows_total)


# ------------------------------------------------------------------------------------- helpers


def require_columns(frame: pd.DataFrame, columns: Iterable[str], frame_name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CheckInputError(f"{frame_name}: missing column(s) {', '.join(missing)}")


def qty(e5: int | np.integer) -> Decimal:
    return Decimal(int(e5)) / QTY_SCALE


def gbp(pence: int | np.integer) -> Decimal:
    return Decimal(int(pence)) / PENCE_PER_GBP


def _int_sum(series: pd.Series) -> int:
    """Exact sum: numpy's when it cannot overflow int64, Python ints otherwise (int64 wraps silently)."""
    if len(series) == 0:
        return 0
    values = series.to_numpy()
    if values.dtype.kind in "iu" and int(np.abs(values).max()) * len(values) < 2**62:
        return int(values.sum())
    return sum(int(v) for v in values)


def _fmt_qty(e5: int) -> str:
    return format(qty(e5).normalize(), "f")


def _fmt_gbp(pence: int) -> str:
    return f"{gbp(pence):,.2f}"


def _utc(value: Any) -> datetime:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _utc_series(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True, errors="coerce")


def markdown_table(rows: pd.DataFrame, limit: int = DEFAULT_ROW_LIMIT, *, total: int | None = None) -> str:
    if rows.empty:
        return ""
    shown = rows.head(limit)
    # Keep the text as formatted ("21.00" must not become 21): money reads as money.
    text = shown.to_markdown(index=False, disable_numparse=True)
    total = len(rows) if total is None else total
    if total > len(shown):
        text += f"\n\n… and {total - len(shown)} more"
    return text


def _keys(frame: pd.DataFrame) -> tuple[str, ...]:
    return tuple((frame["sku"].astype(str) + "@" + frame["warehouse"].astype(str)).tolist())


def _hours(delta: pd.Series) -> pd.Series:
    return (delta.dt.total_seconds() / 3600).round(1)


# ---------------------------------------------------------------------------- inventory drift

PARITY_COLUMNS = ("sku", "warehouse", "wms_qty_e5", "sage_qty_e5", "unexplained_e5", "within_tolerance")


def inventory_drift(parity: pd.DataFrame, thresholds: Thresholds) -> Finding:
    """Lines whose unexplained variance is outside tolerance, valued when a value column is given.

    `parity` columns: PARITY_COLUMNS, optionally ``unexplained_value_pence`` (the variance valued at
    Sage's price; absent values count as 0, which can only lower severity, so the figure says so) and
    ``first_seen`` (when the difference first appeared).
    """
    require_columns(parity, PARITY_COLUMNS, "stock_parity")
    at_fault = parity[~parity["within_tolerance"].astype(bool) & (parity["unexplained_e5"] != 0)]
    has_value = "unexplained_value_pence" in parity.columns
    values = (
        at_fault["unexplained_value_pence"].fillna(0).astype("int64")
        if has_value
        else pd.Series(0, index=at_fault.index, dtype="int64")
    )
    abs_value = _int_sum(values.abs())
    net_value = _int_sum(values)
    abs_units = _int_sum(at_fault["unexplained_e5"].abs())
    lines = len(at_fault)
    material = int((values.abs() > thresholds.materiality_pence).sum())
    severity: Severity = "ERROR" if material else "WARN"

    order = at_fault.assign(_value=values, _abs_value=values.abs(), _abs_qty=at_fault["unexplained_e5"].abs())
    order = order.sort_values(
        ["_abs_value", "_abs_qty", "sku", "warehouse"], ascending=[False, False, True, True]
    )
    # Only the rows shown are formatted: a bad day can put most of a million lines at fault.
    shown = order.head(thresholds.row_limit)
    rows = pd.DataFrame(
        {
            "sku": shown["sku"],
            "warehouse": shown["warehouse"],
            "wms_qty": shown["wms_qty_e5"].map(_fmt_qty),
            "sage_qty": shown["sage_qty_e5"].map(_fmt_qty),
            "unexplained_qty": shown["unexplained_e5"].map(_fmt_qty),
            "unexplained_value_gbp": shown["_value"].map(_fmt_gbp) if has_value else "n/a",
        }
    )
    if "first_seen" in shown.columns:
        rows["first_seen"] = _utc_series(shown["first_seen"]).dt.strftime("%Y-%m-%d %H:%M")
    figures: dict[str, int | float | str] = {
        "lines_checked": len(parity),
        "lines_out_of_tolerance": lines,
        "material_lines": material,
        "unexplained_units_abs": float(qty(abs_units)),
        "unexplained_value_abs_gbp": float(gbp(abs_value)),
        "unexplained_value_net_gbp": float(gbp(net_value)),
        "materiality_gbp": float(gbp(thresholds.materiality_pence)),
    }
    if not has_value:
        figures["note"] = "parity carries no values; severity judged on quantities only (WARN)"
    if lines == 0:
        summary = f"all {len(parity)} SKU-warehouse lines within tolerance"
    else:
        summary = (
            f"{lines} line(s) outside tolerance ({material} material), unexplained "
            f"£{_fmt_gbp(abs_value)} absolute (£{_fmt_gbp(net_value)} net); materiality "
            f"£{_fmt_gbp(thresholds.materiality_pence)} per line"
        )
    return Finding(
        check="inventory_drift",
        passed=lines == 0,
        severity=severity,
        summary=summary,
        figures=figures,
        rows=rows.reset_index(drop=True),
        records=_keys(order),
        row_limit=thresholds.row_limit,
        rows_total=len(order),
    )


# ---------------------------------------------------------------------------- valuation drift

VALUATION_COLUMNS = ("sku", "warehouse", "unexplained_value_pence")


def valuation_drift(detail: pd.DataFrame, thresholds: Thresholds) -> Finding:
    """Unexplained value, net and absolute, against materiality; rows are the lines carrying it.

    `detail` columns: VALUATION_COLUMNS, optionally ``explained_value_pence`` and ``product_group``.
    """
    require_columns(detail, VALUATION_COLUMNS, "valuation_deltas")
    values = detail["unexplained_value_pence"].fillna(0).astype("int64")
    at_fault = detail[values != 0].assign(_v=values[values != 0])
    abs_value = _int_sum(at_fault["_v"].abs())
    net_value = _int_sum(at_fault["_v"])
    explained = (
        _int_sum(detail["explained_value_pence"].fillna(0).astype("int64"))
        if "explained_value_pence" in detail.columns
        else None
    )
    severity: Severity = "ERROR" if abs_value > thresholds.materiality_pence else "WARN"
    order = at_fault.assign(_abs=at_fault["_v"].abs()).sort_values(
        ["_abs", "sku", "warehouse"], ascending=[False, True, True]
    )
    shown = order.head(thresholds.row_limit)
    rows = pd.DataFrame({"sku": shown["sku"], "warehouse": shown["warehouse"]})
    if "product_group" in shown.columns:
        rows["product_group"] = shown["product_group"]
    rows["unexplained_value_gbp"] = shown["_v"].map(_fmt_gbp)
    figures: dict[str, int | float | str] = {
        "lines_with_unexplained_value": len(at_fault),
        "unexplained_value_abs_gbp": float(gbp(abs_value)),
        "unexplained_value_net_gbp": float(gbp(net_value)),
        "materiality_gbp": float(gbp(thresholds.materiality_pence)),
    }
    if explained is not None:
        figures["explained_value_net_gbp"] = float(gbp(explained))
    summary = (
        "no unexplained value"
        if abs_value == 0
        else f"unexplained value £{_fmt_gbp(abs_value)} absolute, £{_fmt_gbp(net_value)} net, "
        f"over {len(at_fault)} line(s); materiality £{_fmt_gbp(thresholds.materiality_pence)}"
    )
    return Finding(
        check="valuation_drift",
        passed=abs_value == 0,
        severity=severity,
        summary=summary,
        figures=figures,
        rows=rows.reset_index(drop=True),
        records=_keys(order),
        row_limit=thresholds.row_limit,
        rows_total=len(order),
    )


# ------------------------------------------------------------------------------ sync illusion

WMS_DESPATCHED_COLUMNS = ("order_number", "despatched_at")
SAGE_OPEN_COLUMNS = ("order_number",)


def despatched_still_open(
    wms_despatched: pd.DataFrame, sage_open: pd.DataFrame, now: datetime
) -> pd.DataFrame:
    """The sync-illusion rule, for the check and the `sync_exceptions` table alike: orders the WMS has
    despatched that Sage still holds open, with how long each has waited, longest first.

    `wms_despatched`: one row per despatched order (``order_number``, ``despatched_at``; an order
    despatched in several parcels may repeat: its first despatch starts the clock).
    `sage_open`: the Sage orders still open (Live with outstanding quantity): ``order_number``.
    Returns ``order_number``, ``despatched_at`` (UTC) and ``waited`` (Timedelta).
    """
    require_columns(wms_despatched, WMS_DESPATCHED_COLUMNS, "wms despatches")
    require_columns(sage_open, SAGE_OPEN_COLUMNS, "sage open orders")
    desp = wms_despatched.assign(despatched_at=_utc_series(wms_despatched["despatched_at"]))
    bad_ts = desp[desp["despatched_at"].isna()]
    if not bad_ts.empty:
        raise CheckInputError(
            f"wms despatches: order {bad_ts['order_number'].iloc[0]!r} has no usable despatched_at"
        )
    first = desp.groupby("order_number", as_index=False)["despatched_at"].min()
    still_open = first[first["order_number"].isin(set(sage_open["order_number"]))]
    still_open = still_open.assign(waited=pd.Timestamp(_utc(now)) - still_open["despatched_at"])
    return still_open.sort_values(["waited", "order_number"], ascending=[False, True]).reset_index(drop=True)


def late_despatches(still_open: pd.DataFrame, sla: timedelta) -> pd.DataFrame:
    """Of `despatched_still_open`'s rows, those that have waited past the SLA: sync illusions."""
    return still_open[still_open["waited"] > sla]


def sync_illusion(
    wms_despatched: pd.DataFrame, sage_open: pd.DataFrame, now: datetime, thresholds: Thresholds
) -> Finding:
    """Orders the WMS has despatched that Sage still holds open, past the SLA, longest wait first
    (inputs as for `despatched_still_open`)."""
    still_open = despatched_still_open(wms_despatched, sage_open, now)
    late = late_despatches(still_open, thresholds.sync_sla).rename(columns={"waited": "_waited"})
    escalate = thresholds.sync_sla * SYNC_ESCALATION_MULTIPLE
    severity: Severity = "ERROR" if (late["_waited"] > escalate).any() else "WARN"
    rows = pd.DataFrame(
        {
            "order_number": late["order_number"],
            "despatched_in_wms": late["despatched_at"].dt.strftime("%Y-%m-%d %H:%M"),
            "hours_waiting": _hours(late["_waited"]),
        }
    )
    oldest = float(_hours(late["_waited"]).max()) if not late.empty else 0.0
    sla_hours = thresholds.sync_sla.total_seconds() / 3600
    return Finding(
        check="sync_illusion",
        passed=late.empty,
        severity=severity,
        summary=(
            f"no order despatched in the WMS has waited past the {sla_hours:g} h SLA for Sage"
            if late.empty
            else f"{len(late)} order(s) despatched in the WMS still open in Sage past the "
            f"{sla_hours:g} h SLA; longest {oldest:g} h"
        ),
        figures={
            "orders_past_sla": len(late),
            "orders_despatched_open_in_sage": len(still_open),
            "oldest_wait_hours": oldest,
            "sla_hours": sla_hours,
        },
        rows=rows.reset_index(drop=True),
        records=tuple(late["order_number"].astype(str)),
        row_limit=thresholds.row_limit,
    )


# ------------------------------------------------------------------------ stuck and orphaned

OUTBOX_COLUMNS = ("id", "order_number", "sku", "state", "attempts", "created_at")
EXCEPTION_COLUMNS = ("kind", "record")
ACTIVE_OUTBOX_STATES = frozenset({"pending", "posting", "deferred"})
# sync_exceptions kinds (as the assets record them) that need a person on the despatch side:
# a WMS shipment with no Sage line to post to; Sage holding more despatched than the WMS shipped.
ORPHAN_KINDS = frozenset({"orphaned_shipment"})
OVER_TARGET_KINDS = frozenset({"despatch_over_target"})
# The outbox records a status refusal as a stuck row whose last error starts so (domain.outbox).
REFUSAL_PREFIX = "Sage refused"


def stuck_and_orphaned(
    outbox: pd.DataFrame, exceptions: pd.DataFrame, now: datetime, thresholds: Thresholds
) -> Finding:
    """Outbox rows stuck or retrying past the lock deadline; shipments with no Sage line; despatches
    Sage refused for the order's status; orders Sage holds as despatched beyond the WMS.

    `outbox` columns: OUTBOX_COLUMNS, optionally ``last_error``, ``warehouse``.
    `exceptions`: open sync exceptions (``kind``, ``record``, optionally ``resolved``, ``first_seen``).
    """
    require_columns(outbox, OUTBOX_COLUMNS, "despatch_outbox")
    require_columns(exceptions, EXCEPTION_COLUMNS, "sync_exceptions")
    now = _utc(now)
    created = _utc_series(outbox["created_at"])
    errors = (
        outbox["last_error"].fillna("").astype(str)
        if "last_error" in outbox.columns
        else pd.Series("", index=outbox.index)
    )
    refused_mask = (outbox["state"] == "stuck") & errors.str.startswith(REFUSAL_PREFIX)
    refused_outbox = outbox[refused_mask]
    stuck = outbox[(outbox["state"] == "stuck") & ~refused_mask]
    overdue_mask = outbox["state"].isin(ACTIVE_OUTBOX_STATES) & (
        (pd.Timestamp(now) - created) > thresholds.lock_deadline
    )
    overdue = outbox[overdue_mask]
    open_exc = exceptions
    if "resolved" in exceptions.columns:
        open_exc = exceptions[~exceptions["resolved"].fillna(False).astype(bool)]
    orphans = open_exc[open_exc["kind"].isin(ORPHAN_KINDS)]
    over_target = open_exc[open_exc["kind"].isin(OVER_TARGET_KINDS)]

    def outbox_rows(frame: pd.DataFrame, problem: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "problem": problem,
                "record": "outbox#" + frame["id"].astype(str),
                "order_number": frame["order_number"].astype(str),
                "sku": frame["sku"].astype(str),
                "attempts": frame["attempts"].astype(int),
                "hours_open": _hours(pd.Timestamp(now) - _utc_series(frame["created_at"])),
                "last_error": frame["last_error"].fillna("").astype(str).str.slice(0, 80)
                if "last_error" in frame.columns
                else "",
            }
        )

    def exception_rows(frame: pd.DataFrame, problem: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "problem": problem,
                "record": frame["record"].astype(str),
                "order_number": "",
                "sku": "",
                "attempts": 0,
                "hours_open": _hours(pd.Timestamp(now) - _utc_series(frame["first_seen"]))
                if "first_seen" in frame.columns
                else np.nan,
                "last_error": frame["kind"].astype(str),
            }
        )

    parts = [
        outbox_rows(refused_outbox, "refused for Sage status"),
        outbox_rows(stuck, "stuck past lock deadline"),
        exception_rows(orphans, "orphaned shipment"),
        exception_rows(over_target, "Sage despatched beyond the WMS"),
        outbox_rows(overdue, "retrying past lock deadline"),
    ]
    rows = (
        pd.concat([p for p in parts if not p.empty], ignore_index=True)
        if any(not p.empty for p in parts)
        else pd.DataFrame(columns=parts[0].columns)
    )
    n_refused = len(refused_outbox)
    needs_person = len(stuck) + len(orphans) + n_refused + len(over_target)
    total = needs_person + len(overdue)
    return Finding(
        check="stuck_and_orphaned",
        passed=total == 0,
        severity="ERROR" if needs_person else "WARN",
        summary=(
            "no stuck, overdue or orphaned despatch records"
            if total == 0
            else f"{len(stuck)} stuck, {len(overdue)} retrying past the "
            f"{thresholds.lock_deadline.total_seconds() / 60:g} min lock deadline, {len(orphans)} orphaned "
            f"shipment(s), {n_refused} refused for Sage status, {len(over_target)} despatched in Sage "
            "beyond the WMS"
        ),
        figures={
            "stuck_records": len(stuck),
            "overdue_records": len(overdue),
            "orphaned_shipments": len(orphans),
            "status_refusals": n_refused,
            "despatched_beyond_wms": len(over_target),
            "outbox_active": int(outbox["state"].isin(ACTIVE_OUTBOX_STATES).sum()),
        },
        rows=rows,
        records=tuple(rows["record"].astype(str)) if not rows.empty else (),
        row_limit=thresholds.row_limit,
    )


# ---------------------------------------------------------------------------- manifest totals

MANIFEST_TOTAL_COLUMNS = ("order_number", "sage_total_e5", "manifest_total_e5", "excluded_total_e5")


def _fmt_money_e5(value_e5: int) -> str:
    # Two places unless the amount is finer (Sage holds 5 dp): never hide a fraction of a penny.
    amount = Decimal(int(value_e5)) / QTY_SCALE
    return f"{amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) else f"{amount.normalize():,f}"


def manifest_totals(orders: pd.DataFrame, thresholds: Thresholds) -> Finding:
    """Every order sent to the WMS: manifest total + mapped excluded lines == Sage order total.

    `orders`: one row per Sage order sent (split manifests summed), MANIFEST_TOTAL_COLUMNS, money as
    GBP × 10^5 (exact at Sage's 5 dp, so a sub-penny slip is caught too).
    """
    require_columns(orders, MANIFEST_TOTAL_COLUMNS, "order_manifests")
    diff = orders["manifest_total_e5"] + orders["excluded_total_e5"] - orders["sage_total_e5"]
    bad = orders.assign(_diff=diff)[diff != 0]
    bad = bad.assign(_abs=bad["_diff"].abs()).sort_values(["_abs", "order_number"], ascending=[False, True])
    shown = bad.head(thresholds.row_limit)
    rows = pd.DataFrame(
        {
            "order_number": shown["order_number"],
            "sage_total_gbp": shown["sage_total_e5"].map(_fmt_money_e5),
            "manifest_gbp": shown["manifest_total_e5"].map(_fmt_money_e5),
            "excluded_lines_gbp": shown["excluded_total_e5"].map(_fmt_money_e5),
            "difference_gbp": shown["_diff"].map(_fmt_money_e5),
        }
    )
    abs_diff = _int_sum(bad["_abs"])
    return Finding(
        check="manifest_totals",
        passed=bad.empty,
        severity="ERROR",
        summary=(
            f"all {len(orders)} order(s) sent to the WMS tie to their Sage totals"
            if bad.empty
            else f"{len(bad)} of {len(orders)} order(s) do not tie to the Sage total; "
            f"£{_fmt_money_e5(abs_diff)} absolute difference"
        ),
        figures={
            "orders_checked": len(orders),
            "orders_not_tying": len(bad),
            "difference_abs_gbp": float(Decimal(abs_diff) / QTY_SCALE),
            "sage_total_gbp": float(Decimal(_int_sum(orders["sage_total_e5"])) / QTY_SCALE),
        },
        rows=rows.reset_index(drop=True),
        records=tuple(bad["order_number"].astype(str)),
        row_limit=thresholds.row_limit,
        rows_total=len(bad),
    )


# ----------------------------------------------------------------------- free stock divergence

AVAILABLE_COLUMNS = ("sku", "warehouse", "available_e5", "sage_free_stock_e5")


def free_stock_divergence(available: pd.DataFrame, thresholds: Thresholds) -> Finding:
    """Where Sage's free stock differs from the computed available stock, and by how much."""
    require_columns(available, AVAILABLE_COLUMNS, "available_stock")
    # No Sage holding for a SKU the WMS stocks: Sage offers none of it, so its free stock is 0.
    available = available.assign(sage_free_stock_e5=available["sage_free_stock_e5"].fillna(0).astype("int64"))
    diff = available["sage_free_stock_e5"] - available["available_e5"]
    bad = available.assign(_diff=diff)[diff.abs() > thresholds.free_stock_tolerance_e5]
    oversell = bad[(bad["sage_free_stock_e5"] > 0) & (bad["available_e5"] <= 0)]
    bad = bad.assign(_abs=bad["_diff"].abs(), _oversell=bad.index.isin(oversell.index)).sort_values(
        ["_oversell", "_abs", "sku", "warehouse"], ascending=[False, False, True, True]
    )
    shown = bad.head(thresholds.row_limit)
    rows = pd.DataFrame(
        {
            "sku": shown["sku"],
            "warehouse": shown["warehouse"],
            "sage_free": shown["sage_free_stock_e5"].map(_fmt_qty),
            "available": shown["available_e5"].map(_fmt_qty),
            "sage_minus_available": shown["_diff"].map(_fmt_qty),
            "oversell_risk": shown["_oversell"],
        }
    )
    return Finding(
        check="free_stock_divergence",
        passed=bad.empty,
        severity="ERROR" if not oversell.empty else "WARN",
        summary=(
            f"Sage free stock agrees with available stock on all {len(available)} lines"
            if bad.empty
            else f"{len(bad)} line(s) where Sage free stock differs from available stock "
            f"({_fmt_qty(_int_sum(bad['_abs']))} units absolute); {len(oversell)} with oversell risk"
        ),
        figures={
            "lines_checked": len(available),
            "lines_diverging": len(bad),
            "divergence_units_abs": float(qty(_int_sum(bad["_abs"]))),
            "divergence_units_net": float(qty(_int_sum(bad["_diff"]))),
            "oversell_risk_lines": len(oversell),
        },
        rows=rows.reset_index(drop=True),
        records=_keys(bad),
        row_limit=thresholds.row_limit,
        rows_total=len(bad),
    )


# ---------------------------------------------------------------------------- despatch latency


def _percentile_seconds(sorted_seconds: list[int], pct: int) -> int:
    # Nearest-rank percentile: an observed latency, never an interpolated one.
    rank = max(1, math.ceil(pct / 100 * len(sorted_seconds)))
    return sorted_seconds[rank - 1]


def despatch_latency(postings: pd.DataFrame, thresholds: Thresholds) -> Finding:
    """Time from the WMS despatch to the Sage posting: p50/p95/max over posted rows.

    `postings` columns: ``despatched_at``, ``posted_at`` (rows not yet posted are skipped),
    optionally ``order_number``. Fails (WARN) when p95 exceeds the policy's latency target; the rows
    are the postings slower than the target, slowest first.
    """
    require_columns(postings, ("despatched_at", "posted_at"), "despatch postings")
    desp = _utc_series(postings["despatched_at"])
    posted = _utc_series(postings["posted_at"])
    done = postings.assign(_lat=(posted - desp).dt.total_seconds())[posted.notna() & desp.notna()]
    seconds = sorted(max(0, int(s)) for s in done["_lat"])
    target_s = int(thresholds.latency_target.total_seconds())
    if not seconds:
        return Finding(
            check="despatch_latency",
            passed=True,
            severity="WARN",
            summary="no despatches posted yet",
            figures={"postings_measured": 0},
            row_limit=thresholds.row_limit,
        )
    p50, p95 = _percentile_seconds(seconds, 50), _percentile_seconds(seconds, 95)
    slow = done[done["_lat"] > target_s].sort_values("_lat", ascending=False)
    rows = pd.DataFrame(
        {
            "order_number": slow["order_number"] if "order_number" in slow.columns else "",
            "despatched_at": _utc_series(slow["despatched_at"]).dt.strftime("%Y-%m-%d %H:%M"),
            "posted_at": _utc_series(slow["posted_at"]).dt.strftime("%Y-%m-%d %H:%M"),
            "latency_minutes": (slow["_lat"] / 60).round(1),
        }
    )
    return Finding(
        check="despatch_latency",
        passed=p95 <= target_s,
        severity="WARN",
        summary=(
            f"despatch to Sage posting: p50 {p50} s, p95 {p95} s over {len(seconds)} posting(s) "
            f"(target: p95 within {target_s} s)"
        ),
        figures={
            "postings_measured": len(seconds),
            "latency_p50_seconds": p50,
            "latency_p95_seconds": p95,
            "latency_max_seconds": seconds[-1],
            "latency_target_seconds": target_s,
            "postings_past_target": len(slow),
        },
        rows=rows.reset_index(drop=True),
        records=tuple(slow["order_number"].astype(str)) if "order_number" in slow.columns else (),
        row_limit=thresholds.row_limit,
    )


# ---------------------------------------------------------------------- open exceptions summary


def exceptions_by_owner(exceptions: pd.DataFrame) -> pd.DataFrame:
    """Open sync exceptions counted by owner and kind, with the oldest first-seen of each group."""
    require_columns(exceptions, ("kind", "owner"), "sync_exceptions")
    open_exc = exceptions
    if "resolved" in exceptions.columns:
        open_exc = exceptions[~exceptions["resolved"].fillna(False).astype(bool)]
    if open_exc.empty:
        return pd.DataFrame(columns=["owner", "kind", "open", "oldest_first_seen"])
    grouped = open_exc.groupby(["owner", "kind"], as_index=False).agg(open=("kind", "size"))
    if "first_seen" in open_exc.columns:
        oldest = (
            open_exc.assign(_fs=_utc_series(open_exc["first_seen"]))
            .groupby(["owner", "kind"], as_index=False)["_fs"]
            .min()
        )
        grouped = grouped.merge(oldest, on=["owner", "kind"])
        grouped["oldest_first_seen"] = grouped.pop("_fs").dt.strftime("%Y-%m-%d %H:%M")
    return grouped.sort_values(["owner", "open", "kind"], ascending=[True, False, True]).reset_index(
        drop=True
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------- Great Expectations data contract


@dataclass(frozen=True)
class _Expect:
    table: str
    kind: str
    kwargs: dict[str, Any]
    label: str


def _ties(parity: pd.DataFrame, detail: pd.DataFrame, summary: pd.DataFrame) -> list[_Expect]:
    """Summary totals must equal the detail's, and valuation quantities must equal parity's."""
    out: list[_Expect] = []
    pairs = [
        ("net_value_pence", detail["value_pence"]),
        ("net_explained_pence", detail["explained_value_pence"]),
        ("net_unexplained_pence", detail["unexplained_value_pence"]),
        ("abs_value_pence", detail["value_pence"].abs()),
        ("abs_unexplained_pence", detail["unexplained_value_pence"].abs()),
    ]
    for column, source in pairs:
        total = _int_sum(source)
        out.append(
            _Expect(
                "valuation_summary",
                "ExpectColumnSumToBeBetween",
                {"column": column, "min_value": total, "max_value": total},
                f"valuation_summary.{column} ties to valuation_deltas ({total})",
            )
        )
    for column in ("variance_e5", "unexplained_e5"):
        total = _int_sum(parity[column])
        out.append(
            _Expect(
                "valuation_deltas",
                "ExpectColumnSumToBeBetween",
                {"column": column, "min_value": total, "max_value": total},
                f"valuation_deltas.{column} ties to stock_parity ({total})",
            )
        )
    return out


def gx_data_contracts(
    parity: pd.DataFrame, detail: pd.DataFrame, summary: pd.DataFrame, *, row_limit: int = DEFAULT_ROW_LIMIT
) -> Finding:
    """Great Expectations 1.x suite over the parity and valuation tables (ERROR on any failure).

    Non-null keys, one row per SKU and warehouse (per warehouse × group × nominal in the summary),
    and totals that tie between detail and summary and between parity and valuation. GX is imported
    here, not at module level: it takes seconds to import.
    """
    require_columns(parity, ("sku", "warehouse", "variance_e5", "unexplained_e5"), "stock_parity")
    require_columns(
        detail,
        (
            "sku",
            "warehouse",
            "variance_e5",
            "unexplained_e5",
            "value_pence",
            "explained_value_pence",
            "unexplained_value_pence",
        ),
        "valuation_deltas",
    )
    require_columns(
        summary,
        (
            "warehouse",
            "product_group",
            "stock_nominal_code",
            "net_value_pence",
            "abs_value_pence",
            "net_explained_pence",
            "net_unexplained_pence",
            "abs_unexplained_pence",
        ),
        "valuation_summary",
    )
    # No usage analytics from a finance pipeline; the deployment env may say so too.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    frames = {"stock_parity": parity, "valuation_deltas": detail, "valuation_summary": summary}
    expectations: list[_Expect] = []
    for table in ("stock_parity", "valuation_deltas"):
        for column in ("sku", "warehouse"):
            expectations.append(
                _Expect(
                    table, "ExpectColumnValuesToNotBeNull", {"column": column}, f"{table}.{column} not null"
                )
            )
        expectations.append(
            _Expect(
                table,
                "ExpectCompoundColumnsToBeUnique",
                {"column_list": ["sku", "warehouse"]},
                f"{table}: one row per SKU and warehouse",
            )
        )
    expectations.append(
        _Expect(
            "valuation_summary",
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["warehouse", "product_group", "stock_nominal_code"]},
            "valuation_summary: one row per warehouse, product group and nominal code",
        )
    )
    expectations.extend(_ties(parity, detail, summary))

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("sage_wms_tables")
    failures: list[dict[str, Any]] = []
    evaluated = 0
    for table, frame in frames.items():
        mine = [e for e in expectations if e.table == table]
        suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_contract"))
        for e in mine:
            suite.add_expectation(getattr(gxe, e.kind)(**e.kwargs))
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}_validation", data=batch, suite=suite)
        )
        result = validation.run(batch_parameters={"dataframe": frame.reset_index(drop=True)})
        # GX keeps suite order in results; pair them back to our labels.
        for e, r in zip(mine, result.results, strict=True):
            evaluated += 1
            if not r.success:
                res = r.result or {}
                failures.append(
                    {
                        "table": table,
                        "expectation": e.label,
                        "unexpected": res.get("unexpected_count", ""),
                        "observed": str(res.get("observed_value", res.get("partial_unexpected_list", "")))[
                            :80
                        ],
                    }
                )
    rows = pd.DataFrame(failures, columns=["table", "expectation", "unexpected", "observed"])
    return Finding(
        check="gx_data_contracts",
        passed=not failures,
        severity="ERROR",
        summary=(
            f"all {evaluated} expectations met"
            if not failures
            else f"{len(failures)} of {evaluated} expectations failed"
        ),
        figures={
            "expectations_evaluated": evaluated,
            "expectations_failed": len(failures),
            "success_percent": round(100 * (evaluated - len(failures)) / evaluated, 2)
            if evaluated
            else 100.0,
        },
        rows=rows,
        records=tuple(f"{f['table']}: {f['expectation']}" for f in failures),
        row_limit=row_limit,
    )


# ------------------------------------------------------------------------ pandera table contracts


def pandera_contract(
    table: str, frame: pd.DataFrame, schema: Any, *, row_limit: int = DEFAULT_ROW_LIMIT
) -> Finding:
    """Validate a stored table against its pandera model (lazy: every failure, not the first)."""
    import pandera.errors as pa_errors

    try:
        schema.validate(frame, lazy=True)
    except pa_errors.SchemaErrors as exc:
        cases = exc.failure_cases
        rows = pd.DataFrame(
            {
                "column": cases["column"].astype(str),
                "check": cases["check"].astype(str).str.slice(0, 60),
                "failure_case": cases["failure_case"].astype(str).str.slice(0, 40),
                "row": cases["index"].astype(str),
            }
        )
        return Finding(
            check=f"{table}_schema",
            passed=False,
            severity="ERROR",
            summary=f"{table}: {len(cases)} schema failure(s) over {rows['column'].nunique()} column(s)",
            figures={"rows_checked": len(frame), "failure_cases": len(cases)},
            rows=rows,
            records=tuple(sorted(set(rows["column"]))),
            row_limit=row_limit,
        )
    return Finding(
        check=f"{table}_schema",
        passed=True,
        severity="ERROR",
        summary=f"{table}: {len(frame)} row(s) match the schema",
        figures={"rows_checked": len(frame), "failure_cases": 0},
        row_limit=row_limit,
    )


# ------------------------------------------------------------ contracts of the operational tables
#
# `storage.schemas` guards the derived tables; these guard the tables the pipeline keeps running on
# (outbox, exceptions, manifests) and the raw snapshots, as stored (NUMERIC columns come back Decimal).


def _decimals(series: pd.Series) -> pd.Series:
    return series.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else Decimal(v))


def _ge_zero(series: pd.Series) -> pd.Series:
    return _decimals(series).map(lambda v: v is not None and v >= 0)


class OutboxContract(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    dedupe_key: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    document_no: Series[str] = pa.Field(str_length={"min_value": 1})
    line_id: Series[int]
    sku: Series[str] = pa.Field(str_length={"min_value": 1})
    warehouse: Series[str] = pa.Field(str_length={"min_value": 1})
    quantity: Series[object]
    state: Series[str] = pa.Field(isin=["pending", "posting", "posted", "deferred", "stuck"])
    attempts: Series[int] = pa.Field(ge=0)

    class Config:
        coerce = True

    @pa.check("quantity", name="quantity > 0")
    def _positive(cls, s: pd.Series) -> pd.Series:
        return _decimals(s).map(lambda v: v is not None and v > 0)

    @pa.dataframe_check(name="posted rows carry posted_at")
    def _posted_at(cls, df: pd.DataFrame) -> pd.Series:
        return (df["state"] != "posted") | df["posted_at"].notna()

    @pa.dataframe_check(name="deferred rows carry next_attempt_at")
    def _next_attempt(cls, df: pd.DataFrame) -> pd.Series:
        return (df["state"] != "deferred") | df["next_attempt_at"].notna()


class SyncExceptionsContract(pa.DataFrameModel):
    kind: Series[str] = pa.Field(str_length={"min_value": 1})
    record: Series[str] = pa.Field(str_length={"min_value": 1})
    owner: Series[str] = pa.Field(isin=["finance", "operations"])
    resolved: Series[bool]

    class Config:
        coerce = True
        unique = ["kind", "record"]  # noqa: RUF012 - pandera reads it as config

    @pa.dataframe_check(name="first_seen <= last_seen")
    def _seen_in_order(cls, df: pd.DataFrame) -> pd.Series:
        return pd.to_datetime(df["first_seen"], utc=True) <= pd.to_datetime(df["last_seen"], utc=True)

    @pa.dataframe_check(name="resolved rows carry resolved_at")
    def _resolved_at(cls, df: pd.DataFrame) -> pd.Series:
        return ~df["resolved"].astype(bool) | df["resolved_at"].notna()


class OrderManifestsContract(pa.DataFrameModel):
    order_number: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    sage_order_id: Series[int]
    sage_document_no: Series[str] = pa.Field(str_length={"min_value": 1})
    part: Series[int] = pa.Field(ge=1)
    wms_warehouse_id: Series[int] = pa.Field(ge=1)
    total: Series[object]

    class Config:
        coerce = True

    @pa.check("total", name="total >= 0")
    def _total(cls, s: pd.Series) -> pd.Series:
        return _ge_zero(s)

    @pa.dataframe_check(name="sent manifests carry the WMS order id")
    def _sent(cls, df: pd.DataFrame) -> pd.Series:
        return df["sent_at"].isna() | df["wms_order_id"].notna()


class SageHoldingsContract(pa.DataFrameModel):
    sku: Series[str] = pa.Field(str_length={"min_value": 1})
    warehouse: Series[str] = pa.Field(str_length={"min_value": 1})
    confirmed_qty_in_stock: Series[object]
    unconfirmed_qty_in_stock: Series[object]
    quantity_in_stock: Series[object]
    quantity_allocated: Series[object]
    free_stock_available: Series[object]

    class Config:
        coerce = True
        unique = ["sku", "warehouse"]  # noqa: RUF012 - pandera reads it as config

    @pa.dataframe_check(name="quantity_in_stock = confirmed + unconfirmed")
    def _in_stock(cls, df: pd.DataFrame) -> pd.Series:
        total = _decimals(df["confirmed_qty_in_stock"]) + _decimals(df["unconfirmed_qty_in_stock"])
        return total == _decimals(df["quantity_in_stock"])

    @pa.check("quantity_allocated", name="quantity_allocated >= 0")
    def _allocated(cls, s: pd.Series) -> pd.Series:
        return _ge_zero(s)


class WmsStockContract(pa.DataFrameModel):
    wms_sku: Series[str] = pa.Field(str_length={"min_value": 1})
    wms_warehouse_id: Series[int] = pa.Field(ge=1)
    level: Series[object]
    quarantine: Series[object]
    allocated: Series[object]

    class Config:
        coerce = True
        unique = ["wms_sku", "wms_warehouse_id"]  # noqa: RUF012 - pandera reads it as config

    @pa.check("level", "quarantine", "allocated", name=">= 0")
    def _not_negative(cls, s: pd.Series) -> pd.Series:
        return _ge_zero(s)


class SageProductsContract(pa.DataFrameModel):
    sku: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    product_group: Series[str] = pa.Field(str_length={"min_value": 1})
    product_type: Series[str] = pa.Field(isin=["Stock", "ServiceLabour", "Miscellaneous"])
    costing_method: Series[str] = pa.Field(isin=["FIFO", "Average", "Standard", "Actual"])
    stock_nominal_code: Series[str] = pa.Field(str_length={"min_value": 1})
    standard_cost: Series[object]
    average_buying_price: Series[object]

    class Config:
        coerce = True

    @pa.check("standard_cost", "average_buying_price", name=">= 0")
    def _prices(cls, s: pd.Series) -> pd.Series:
        return _ge_zero(s)


class SageOrderLinesContract(pa.DataFrameModel):
    id: Series[int] = pa.Field(unique=True)
    order_id: Series[int]
    document_no: Series[str] = pa.Field(str_length={"min_value": 1})
    line_type: Series[str] = pa.Field(
        isin=["EnumLineTypeStandard", "EnumLineTypeFreeText", "EnumLineTypeCharge", "EnumLineTypeComment"]
    )
    line_quantity: Series[object]
    despatch_receipt_quantity: Series[object]

    class Config:
        coerce = True

    @pa.check("line_quantity", "despatch_receipt_quantity", name=">= 0")
    def _not_negative(cls, s: pd.Series) -> pd.Series:
        return _ge_zero(s)

    @pa.dataframe_check(name="despatched <= ordered")
    def _not_over_despatched(cls, df: pd.DataFrame) -> pd.Series:
        return _decimals(df["despatch_receipt_quantity"]) <= _decimals(df["line_quantity"])


class WmsOrdersContract(pa.DataFrameModel):
    order_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    order_number: Series[str] = pa.Field(str_length={"min_value": 1})
    status: Series[str] = pa.Field(
        isin=[
            "NEW",
            "ALLOCATED",
            "PRINTED",
            "PICKING",
            "PICKED",
            "PACKED",
            "DESPATCHED",
            "ON_BACKORDER",
            "ON_HOLD",
            "CANCELLED",
        ]
    )
    raw_status: Series[str]

    class Config:
        coerce = True

    @pa.dataframe_check(name="despatched orders carry despatched_at")
    def _despatch_time(cls, df: pd.DataFrame) -> pd.Series:
        return (df["status"] != "DESPATCHED") | df["despatched_at"].notna()


OPERATIONAL_CONTRACTS: dict[str, type[pa.DataFrameModel]] = {
    "sage_products": SageProductsContract,
    "sage_order_lines": SageOrderLinesContract,
    "wms_orders": WmsOrdersContract,
    "despatch_outbox": OutboxContract,
    "sync_exceptions": SyncExceptionsContract,
    "order_manifests": OrderManifestsContract,
    "sage_holdings": SageHoldingsContract,
    "wms_stock": WmsStockContract,
}
