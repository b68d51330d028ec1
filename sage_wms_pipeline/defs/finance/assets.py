"""Finance: available stock, stock parity as at a cut-off, valuation deltas, sync exceptions.

The assets build the domain's input frames (`storage.schemas`) from the ingested tables, call the
pure functions in `sage_wms_pipeline.domain`, and write the result with `Database.replace_table`
(pandera-validated, one transaction). Quantities are int64 × 10^5 and money whole pence throughout.
"""

# No `from __future__ import annotations`: Dagster reads the config class from the real annotation.
import calendar
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.defs.checks import sync_state
from sage_wms_pipeline.defs.freshness import freshness_for
from sage_wms_pipeline.defs.resources import ParityDatabase, PolicyResource, policy_metadata
from sage_wms_pipeline.domain import available_stock as available_mod
from sage_wms_pipeline.domain import parity as parity_mod
from sage_wms_pipeline.domain import valuation as valuation_mod
from sage_wms_pipeline.domain.mapping import to_sage_keys
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import QTY_SCALE, pence_to_gbp, to_e5
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline.storage.db import Database

GROUP = "finance"
KINDS = {"python", "pandas"}


def e5(values: Any, field: str) -> pd.Series:
    return pd.Series([to_e5(Decimal(v), field=field) for v in values], dtype="int64")


def utc_series(values: Any) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).astype("datetime64[ns, UTC]")


def qty_text(value_e5: int) -> str:
    return str(Decimal(int(value_e5)) / QTY_SCALE)


def plot_qty(value_e5: int) -> int | float:
    return store.plot_number(Decimal(int(value_e5)) / QTY_SCALE)


def resolve_cutoff(text: str | None, now: datetime | None = None) -> datetime:
    """`now` | `month_end` | an ISO date (the end of that day, UTC) | an ISO timestamp.

    `month_end`: the end of today when today is the last day of the month, else the end of the
    previous month (a close run in the first days of the new month still means the old month).
    """
    now = now or datetime.now(UTC)
    value = (text or "now").strip()
    if value == "now":
        return now
    if value == "month_end":
        last = calendar.monthrange(now.year, now.month)[1]
        day = now.date() if now.day == last else now.date().replace(day=1) - timedelta(days=1)
        return datetime.combine(day, time.max, tzinfo=UTC)
    try:
        if len(value) == 10:
            return datetime.combine(datetime.fromisoformat(value).date(), time.max, tzinfo=UTC)
        stamp = pd.Timestamp(value)
    except ValueError as exc:
        raise dg.Failure(
            f"config cutoff: {value!r} is not now, month_end, a date or a timestamp ({exc})"
        ) from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


class ParityConfig(dg.Config):
    cutoff: str = Field(
        default="now",
        description="Cut-off: 'now', 'month_end', an ISO date (end of that day, UTC) or an ISO timestamp",
    )


# ------------------------------------------------------------------------------------ input frames


def wms_stock_frame(db: Database) -> pd.DataFrame:
    raw = store.read_frame(db.engine, core.wms_stock)
    return pd.DataFrame(
        {
            "wms_sku": raw["wms_sku"].astype(str),
            "wms_warehouse_id": raw["wms_warehouse_id"].astype("int64"),
            "sellable_e5": e5(raw["level"], "wms_stock.level"),
            "quarantine_e5": e5(raw["quarantine"], "wms_stock.quarantine"),
        }
    )


def open_allocations_frame(db: Database) -> pd.DataFrame:
    o, lt = store.wms_orders, store.wms_order_lines
    with db.read() as conn:
        rows = conn.execute(
            sa.select(lt.c.order_number, lt.c.wms_sku, lt.c.wms_warehouse_id, o.c.raw_status, lt.c.allocated)
            .join(o, o.c.order_id == lt.c.order_id)
            .where(lt.c.wms_warehouse_id.is_not(None))
        ).all()
    return pd.DataFrame(
        {
            "order_number": [r.order_number for r in rows],
            "wms_sku": [r.wms_sku for r in rows],
            "wms_warehouse_id": pd.Series([int(r.wms_warehouse_id) for r in rows], dtype="int64"),
            "wms_status": [r.raw_status for r in rows],
            "quantity_e5": e5([r.allocated for r in rows], "wms_order_lines.allocated"),
        }
    )


def sage_holdings_frame(db: Database) -> pd.DataFrame:
    """Sage holdings of stock items only (service and miscellaneous items are not counted stock)."""
    h, p = core.sage_holdings, core.sage_products
    with db.read() as conn:
        rows = conn.execute(
            sa.select(
                h.c.sku, h.c.warehouse, p.c.product_group, h.c.quantity_in_stock, h.c.free_stock_available
            )
            .join(p, p.c.sku == h.c.sku)
            .where(p.c.product_type == "Stock")
        ).all()
    return pd.DataFrame(
        {
            "sku": [r.sku for r in rows],
            "warehouse": [r.warehouse for r in rows],
            "product_group": [r.product_group for r in rows],
            "quantity_in_stock_e5": e5(
                [r.quantity_in_stock for r in rows], "sage_holdings.quantity_in_stock"
            ),
            "free_stock_e5": e5([r.free_stock_available for r in rows], "sage_holdings.free_stock_available"),
        }
    )


def explanation_events(db: Database, policy: Policy) -> pd.DataFrame:
    """Timing items with the time each reached Sage (NaT = not yet).

    - despatch_not_posted: every WMS despatch line; posted when all its outbox rows are posted.
    - receipt_not_in_sage: WMS book-ins (known to Sage by a goods-in with the same reference, or by
      a posted stock adjustment) and restocked returns (by a posted adjustment).
    """
    cols = ["kind", "reference", "wms_sku", "wms_warehouse_id", "quantity_e5", "event_at", "sage_posted_at"]
    out: list[dict[str, Any]] = []
    outbox = store.read_frame(db.engine, core.despatch_outbox)
    posted_at: dict[str, Any] = {}
    if len(outbox):
        outbox["source_key"] = [jsonutil.loads(s).get("dedupe_key", "") for s in outbox["source"]]
        for key, group in outbox.groupby("source_key"):
            posted_at[key] = group["posted_at"].max() if (group["state"] == "posted").all() else None
    for r in store.read_frame(db.engine, core.wms_despatches).itertuples():
        out.append(
            {
                "kind": "despatch_not_posted",
                "reference": r.dedupe_key,
                "wms_sku": r.wms_sku,
                "wms_warehouse_id": int(r.wms_warehouse_id),
                "quantity_e5": to_e5(Decimal(r.quantity)),
                "event_at": r.event_at,
                "sage_posted_at": posted_at.get(r.dedupe_key),
            }
        )
    adjustments = store.read_frame(db.engine, store.stock_adjustments)
    adj_posted: dict[str, Any] = {}
    for r in adjustments.itertuples():
        base = r.key.rsplit("#", 1)[0]
        if r.state == "posted":
            adj_posted[base] = max(filter(None, (adj_posted.get(base), r.posted_at)))
    goods_in = store.read_frame(db.engine, store.sage_goods_in)
    sage_in = {(g.reference, g.sku, g.warehouse) for g in goods_in.itertuples()}
    for r in store.read_frame(db.engine, store.wms_receipts).itertuples():
        if Decimal(r.quantity_booked) <= 0:
            continue
        mapped = to_sage_keys(
            pd.DataFrame({"wms_sku": [r.wms_sku], "wms_warehouse_id": [int(r.wms_warehouse_id)], "q": [0]}),
            policy,
            ["q"],
        ).iloc[0]
        if (r.reference, mapped["sku"], mapped["warehouse"]) in sage_in:
            continue  # Sage booked it in itself: in both snapshots, nothing in flight
        when = adj_posted.get(f"receipt:{r.asn_id}:{r.wms_sku}:{r.wms_warehouse_id}")
        out.append(
            {
                "kind": "receipt_not_in_sage",
                "reference": f"ASN {r.asn_id}",
                "wms_sku": r.wms_sku,
                "wms_warehouse_id": int(r.wms_warehouse_id),
                "quantity_e5": to_e5(Decimal(r.quantity_booked)),
                "event_at": r.updated_at,
                "sage_posted_at": when,
            }
        )
    for r in store.read_frame(db.engine, store.wms_returns).itertuples():
        if r.disposition != "RESTOCK" or r.wms_warehouse_id is None or pd.isna(r.wms_warehouse_id):
            continue
        out.append(
            {
                "kind": "receipt_not_in_sage",
                "reference": f"return {r.return_id}",
                "wms_sku": r.wms_sku,
                "wms_warehouse_id": int(r.wms_warehouse_id),
                "quantity_e5": to_e5(Decimal(r.quantity)),
                "event_at": r.returned_at,
                "sage_posted_at": adj_posted.get(f"return:{r.dedupe_key}"),
            }
        )
    frame = pd.DataFrame(out, columns=cols)
    frame["wms_warehouse_id"] = frame["wms_warehouse_id"].astype("int64")
    frame["quantity_e5"] = frame["quantity_e5"].astype("int64")
    frame["event_at"] = utc_series(frame["event_at"])
    frame["sage_posted_at"] = utc_series(frame["sage_posted_at"])
    # Parity compares the latest snapshots, so a posting counts from what Sage's snapshot holds: one
    # posted after Sage's holdings were read is not in them yet. (WMS event times are the WMS's own
    # clock, not comparable with ours, so WMS events are taken as read: ingest despatches after stock.)
    sage_at = sage_snapshot_time(db)
    if sage_at is not None:
        frame.loc[frame["sage_posted_at"] > sage_at, "sage_posted_at"] = pd.NaT
    return frame


def sage_snapshot_time(db: Database) -> pd.Timestamp | None:
    with db.read() as conn:
        return utc_stamp(conn.execute(sa.select(sa.func.max(core.sage_holdings.c.snapshot_at))).scalar())


def utc_stamp(value: Any) -> pd.Timestamp | None:
    """A stored timestamp as aware UTC (SQLite hands back naive values, all of them UTC)."""
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def valuation_prices_frame(db: Database) -> pd.DataFrame:
    p = store.read_frame(db.engine, core.sage_products)
    return pd.DataFrame(
        {
            "sku": p["sku"],
            "product_group": p["product_group"],
            "costing_method": p["costing_method"],
            "stock_nominal_code": p["stock_nominal_code"],
            "standard_cost_e5": e5(p["standard_cost"], "sage_products.standard_cost"),
            "average_buying_price_e5": e5(p["average_buying_price"], "sage_products.average_buying_price"),
        }
    )


def fifo_layers_frame(db: Database) -> pd.DataFrame:
    """Remaining FIFO layers: per SKU and warehouse, the newest goods-in that make up the quantity
    in stock (FIFO issues the oldest first, so what is left is the newest)."""
    p, h = core.sage_products, core.sage_holdings
    g = store.sage_goods_in
    with db.read() as conn:
        ins = conn.execute(
            sa.select(g)
            .join(p, p.c.sku == g.c.sku)
            .where(p.c.costing_method == "FIFO")
            .order_by(g.c.sku, g.c.warehouse, g.c.received_at.desc(), g.c.id.desc())
        ).all()
        on_hand = {
            (r.sku, r.warehouse): Decimal(r.quantity_in_stock)
            for r in conn.execute(sa.select(h.c.sku, h.c.warehouse, h.c.quantity_in_stock))
        }
    rows = []
    need: dict[tuple[str, str], Decimal] = dict(on_hand)
    for r in ins:
        left = need.get((r.sku, r.warehouse), Decimal(0))
        if left <= 0:
            continue
        take = min(left, Decimal(r.quantity))
        need[(r.sku, r.warehouse)] = left - take
        rows.append(
            {
                "sku": r.sku,
                "warehouse": r.warehouse,
                "received_at": r.received_at,
                "quantity_e5": to_e5(take),
                "unit_cost_e5": to_e5(Decimal(r.unit_cost)),
            }
        )
    frame = pd.DataFrame(rows, columns=["sku", "warehouse", "received_at", "quantity_e5", "unit_cost_e5"])
    frame["received_at"] = utc_series(frame["received_at"])
    return frame.astype({"quantity_e5": "int64", "unit_cost_e5": "int64"})


# ----------------------------------------------------------------------------------------- assets


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=["wms_stock_levels", "wms_orders", "sage_warehouse_holdings", "sage_products"],
    freshness_policy=freshness_for("available_stock"),
    description="Available stock per SKU and warehouse: WMS level minus open allocations (quarantine never "
    "counts), in Sage units, with Sage's free stock beside it for comparison.",
)
def available_stock(parity_db: ParityDatabase, policy: PolicyResource) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    frame = available_mod.available_stock(
        wms_stock_frame(db), open_allocations_frame(db), pol, sage_holdings_frame(db)
    )
    written = db.replace_table("available_stock", frame)
    diff = frame["difference_e5"].fillna(0)
    return dg.MaterializeResult(
        metadata={
            "rows": written,
            "available_total": plot_qty(int(frame["available_e5"].sum())),
            "lines_differing_from_sage_free_stock": int((diff != 0).sum()),
            "abs_difference_vs_sage_free_stock": plot_qty(int(diff.abs().sum())),
            "policy/allocation_owner": pol.allocation_owner,
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[
        "wms_stock_levels",
        "sage_warehouse_holdings",
        "sage_products",
        "wms_despatches",
        "sage_despatches",
        "wms_receipts",
        "wms_returns",
    ],
    freshness_policy=freshness_for("stock_parity"),
    description="Stock parity per SKU and warehouse as at the cut-off: WMS - Sage in Sage units, explained "
    "by cause (in-flight despatches, receipts not in Sage, quarantine, mapping) and the unexplained rest, "
    "with "
    "tolerance and how long each difference has stood.",
)
def stock_parity(
    context: dg.AssetExecutionContext, config: ParityConfig, parity_db: ParityDatabase, policy: PolicyResource
) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    cutoff = resolve_cutoff(config.cutoff)
    previous = db.read_table("stock_parity")[["sku", "warehouse", "first_seen"]]
    frame = parity_mod.stock_parity(
        wms_stock_frame(db), sage_holdings_frame(db), explanation_events(db, pol), pol, cutoff, previous
    )
    written = db.replace_table("stock_parity", frame)
    drift = frame[frame["variance_e5"] != 0]
    out = frame[~frame["within_tolerance"]]
    context.log.info(
        f"parity as at {cutoff.isoformat()}: {len(drift)} lines differ, {len(out)} out of tolerance"
    )
    preview = out.sort_values("unexplained_e5", key=np.abs, ascending=False).head(20)
    table = "| sku | warehouse | WMS | Sage | unexplained |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {r.sku} | {r.warehouse} | {qty_text(r.wms_qty_e5)} | {qty_text(r.sage_qty_e5)} | "
        f"{qty_text(r.unexplained_e5)} |"
        for r in preview.itertuples()
    )
    return dg.MaterializeResult(
        metadata={
            "cutoff": dg.MetadataValue.timestamp(cutoff),
            "rows": written,
            "drift_lines": len(drift),
            "out_of_tolerance_lines": len(out),
            "timing_lines": int(
                ((frame["in_flight_despatch_e5"] != 0) | (frame["receipts_not_in_sage_e5"] != 0)).sum()
            ),
            "unexplained_net_units": plot_qty(int(frame["unexplained_e5"].sum())),
            "unexplained_abs_units": plot_qty(int(frame["unexplained_e5"].abs().sum())),
            "in_flight_despatch_units": plot_qty(int(frame["in_flight_despatch_e5"].sum())),
            "oldest_difference_hours": round(float(frame["age_seconds"].max() or 0) / 3600, 1)
            if len(frame)
            else 0,
            "out_of_tolerance": dg.MetadataValue.md(table),
            **policy_metadata(pol),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=["stock_parity", "sage_products", "sage_warehouse_holdings"],
    freshness_policy=freshness_for("valuation_deltas"),
    description="Each parity variance valued at Sage's valuation price for the item's costing method "
    "(Standard, Average, FIFO layers), explained and unexplained, exact to the penny; summary by "
    "warehouse, product group and nominal stock code (table valuation_summary) ties to the detail.",
)
def valuation_deltas(parity_db: ParityDatabase, policy: PolicyResource) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    parity = db.read_table("stock_parity")
    detail, summary = valuation_mod.valuation_deltas(
        parity, valuation_prices_frame(db), pol, fifo_layers_frame(db)
    )
    # Detail and summary are replaced one after the other; each write is atomic on its own.
    db.replace_table("valuation_deltas", detail)
    db.replace_table("valuation_summary", summary)
    net_unexplained = int(detail["unexplained_value_pence"].sum())
    abs_unexplained = int(detail["unexplained_value_pence"].abs().sum())
    return dg.MaterializeResult(
        metadata={
            "rows": len(detail),
            "summary_rows": len(summary),
            "net_value_gbp": dg.MetadataValue.text(str(pence_to_gbp(int(detail["value_pence"].sum())))),
            "unexplained_net_gbp": dg.MetadataValue.text(str(pence_to_gbp(net_unexplained))),
            "unexplained_abs_gbp": dg.MetadataValue.text(str(pence_to_gbp(abs_unexplained))),
            "unexplained_value_pence": net_unexplained,
            "unexplained_abs_value_pence": abs_unexplained,
            "material_lines": int(detail["material"].sum()),
            "policy/valuation_master": pol.valuation_master,
            "policy/value_materiality_gbp": dg.MetadataValue.text(str(pol.tolerances.value_materiality_gbp)),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[
        "stock_parity",
        "despatch_postings",
        "order_manifests",
        "wms_orders",
        "sage_sales_orders",
        "wms_despatches",
        "stock_adjustments",
    ],
    freshness_policy=freshness_for("sync_exceptions"),
    description="Open sync exceptions with record, context, owner (finance|operations), first and last seen: "
    "sync illusions past the SLA, stuck postings (locked past the deadline, refused by Sage), orphaned "
    "shipments, unknown SKUs, quarantined input.",
)
def sync_exceptions(parity_db: ParityDatabase, policy: PolicyResource) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    now = datetime.now(UTC)
    # The same rule as the sync_illusion check (domain.checks.despatched_still_open), kept as rows.
    illusions = sync_state.sync_illusions(db.engine, pol, now)
    for r in illusions.itertuples():
        context = {
            "order": r.order_number,
            "despatched_at": r.despatched_at.isoformat(),
            "waited_hours": round(r.waited.total_seconds() / 3600, 1),
        }
        db.record_exception("sync_illusion", r.order_number, context, "operations", now=now)
    db.resolve_exceptions("sync_illusion", list(illusions["order_number"]), now=now)

    quarantined = store.read_frame(db.engine, core.wms_quarantine)
    records = [f"{r.source}#{r.id}" for r in quarantined.itertuples()]
    for r, record in zip(quarantined.itertuples(), records, strict=True):
        db.record_exception(
            "quarantined_input",
            record,
            {"source": r.source, "reason": r.reason, "record_key": r.record_key},
            "operations",
            now=now,
        )
    db.resolve_exceptions("quarantined_input", records, now=now)

    parity = db.read_table("stock_parity")
    unmapped = parity[parity["mapping_issue"].notna()] if len(parity) else parity
    keys = [f"{r.sku}@{r.warehouse}" for r in unmapped.itertuples()]
    for r, key in zip(unmapped.itertuples(), keys, strict=True):
        db.record_exception(
            "unmapped_stock",
            key,
            {
                "sku": r.sku,
                "warehouse": r.warehouse,
                "issue": r.mapping_issue,
                "variance": qty_text(r.variance_e5),
            },
            "operations",
            now=now,
        )
    db.resolve_exceptions("unmapped_stock", keys, now=now)

    stuck = {r["dedupe_key"] for r in db.outbox_rows(state="stuck")}
    db.resolve_exceptions("despatch_stuck", stuck, now=now)

    open_rows = db.exceptions(open_only=True)
    by_kind = Counter(r["kind"] for r in open_rows)
    by_owner = Counter(r["owner"] for r in open_rows)
    oldest = min((pd.Timestamp(r["first_seen"]) for r in open_rows), default=None)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.tz_localize("UTC")
    sample = "| kind | record | owner | last seen |\n|---|---|---|---|\n" + "\n".join(
        f"| {r['kind']} | {r['record']} | {r['owner']} | {r['last_seen']} |" for r in open_rows[:25]
    )
    return dg.MaterializeResult(
        metadata={
            "open_exceptions": len(open_rows),
            "stuck_records": len(stuck),
            **{
                f"kind/{k}": by_kind.get(k, 0)
                for k in (
                    "sync_illusion",
                    "despatch_stuck",
                    "orphaned_shipment",
                    "unknown_sku",
                    "unmapped_adjustment",
                    "quarantined_input",
                    "manifest_refused",
                    "unmapped_stock",
                    "despatch_over_target",
                )
            },
            "owner/finance": by_owner.get("finance", 0),
            "owner/operations": by_owner.get("operations", 0),
            "oldest_open_hours": round((now - oldest.to_pydatetime()).total_seconds() / 3600, 1)
            if oldest
            else 0,
            "open": dg.MetadataValue.md(sample),
            "policy/despatch_sla_hours": dg.MetadataValue.text(str(pol.despatch_sla_hours)),
        }
    )
