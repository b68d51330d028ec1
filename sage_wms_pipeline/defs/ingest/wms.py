"""WMS ingest: incremental by the client's opaque cursor, kept in the project database.

Each read, its quarantined records and the new cursor are written in ONE transaction, so a run that
dies leaves the cursor where the data is: the next run re-reads, and because every table is keyed
by the record's dedupe key (or id) and orders only ever move forward (`status_accepts`), re-reading
changes nothing. Malformed records go to `wms_quarantine` with their reason, never dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from sage_wms_pipeline.clients.wms.base import (
    Batch,
    DespatchEvent,
    QuarantinedRecord,
    WmsOrder,
    fold_orders,
    status_accepts,
)
from sage_wms_pipeline.defs.freshness import freshness_for
from sage_wms_pipeline.defs.resources import ParityDatabase, WmsResource
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline.storage.db import Database

GROUP = "wms_ingest"
KINDS = {"mintsoft", "python"}
INGEST_RETRY = dg.RetryPolicy(
    max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def _known_order_ids(db: Database) -> list[str]:
    """Orders already held in wms_orders are real: the client need not look each one up again, which
    on a peak day is one extra request per order (20,000 orders: ~130 s instead of ~20 s)."""
    with db.read() as conn:
        return list(conn.execute(sa.select(store.wms_orders.c.order_id)).scalars())


def _wh(value: str | None) -> int | None:
    return int(value) if value is not None and str(value).isdigit() else None


def _by_warehouse(
    records: Sequence[Any], source: str, label: Callable[[Any], str]
) -> tuple[list[tuple[Any, int]], list[QuarantinedRecord]]:
    """Each record with its numeric WMS warehouse id; one whose id is not a number is quarantined
    with the reason (naming the record), never dropped."""
    kept: list[tuple[Any, int]] = []
    bad: list[QuarantinedRecord] = []
    for rec in records:
        wh = _wh(rec.warehouse_id)
        if wh is None:
            bad.append(
                QuarantinedRecord(
                    vendor=rec.vendor,
                    source=source,
                    payload=rec.model_dump(mode="json"),
                    reason=f"{label(rec)}: warehouse_id: {rec.warehouse_id!r} is not a number",
                    dedupe_key=getattr(rec, "dedupe_key", None),
                )
            )
        else:
            kept.append((rec, wh))
    return kept, bad


def _ingest_metadata(batch: Batch[Any], written: int, quarantined: int, cursor: str | None) -> dict[str, Any]:
    reasons = Counter(q.reason.split(":")[0] for q in batch.quarantined)
    meta: dict[str, Any] = {
        "records_read": len(batch.records),
        "records_written": written,
        "quarantined": len(batch.quarantined),
        "quarantined_new": quarantined,
        "cursor": dg.MetadataValue.text(cursor or ""),
    }
    if reasons:
        meta["quarantine_reasons"] = dg.MetadataValue.md(
            "| reason | count |\n|---|---|\n"
            + "\n".join(f"| {r} | {n} |" for r, n in reasons.most_common(10))
        )
    return meta


def _quarantine(conn: sa.Connection, asset: str, records: Sequence[QuarantinedRecord]) -> int:
    return store.quarantine(conn, asset, records)


def _store_batch(
    db: Database,
    asset: str,
    rows: list[dict[str, Any]],
    batch: Batch[Any],
    rejected: Sequence[QuarantinedRecord] = (),
    *,
    write: Callable[[sa.Connection, list[dict[str, Any]]], int],
) -> dict[str, Any]:
    """Write a batch's rows, quarantine its rejects (the client's and the asset's) and move the
    cursor in one transaction, so a run that dies re-reads the batch and the idempotent write makes
    the replay harmless. Returns the ingest metadata."""
    with db.write() as conn:
        written = write(conn, rows)
        new_q = _quarantine(conn, asset, [*batch.quarantined, *rejected])
        store.set_cursor(conn, asset, batch.next_cursor)
    return _ingest_metadata(batch, written, new_q, batch.next_cursor)


def _tally(prefix: str, values: Iterable[str]) -> dict[str, int]:
    return {f"{prefix}/{k}": int(v) for k, v in sorted(Counter(values).items())}


# ------------------------------------------------------------------------------------ orders


def apply_orders(conn: sa.Connection, orders: Sequence[WmsOrder]) -> list[WmsOrder]:
    """Upsert orders that move forward against what is stored; returns those applied."""
    folded = fold_orders(orders)
    t = store.wms_orders
    ids = list(folded)
    stored: dict[str, tuple[str, Any]] = {}
    for start in range(0, len(ids), 500):
        for row in conn.execute(
            sa.select(t.c.order_id, t.c.status, t.c.updated_at).where(
                t.c.order_id.in_(ids[start : start + 500])
            )
        ):
            stored[row.order_id] = (row.status, row.updated_at)
    applied = []
    for order in folded.values():
        current = stored.get(order.order_id)
        if current is not None:
            cur_at = pd.Timestamp(current[1])
            cur_at = cur_at.tz_localize("UTC") if cur_at.tzinfo is None else cur_at
            if not status_accepts(
                type(order.status)(current[0]), cur_at.to_pydatetime(), order.status, order.updated_at
            ):
                continue
        applied.append(order)
    store.upsert(
        conn,
        t,
        [
            {
                "order_id": o.order_id,
                "order_number": o.order_number,
                "external_reference": o.external_reference,
                "status": o.status.value,
                "raw_status": o.raw_status,
                "updated_at": o.updated_at,
                "warehouse_id": o.warehouse_id,
                "despatched_at": o.despatched_at,
                "part": o.part,
                "number_of_parts": o.number_of_parts,
                "dedupe_key": o.dedupe_key,
            }
            for o in applied
        ],
    )
    lines_t = store.wms_order_lines
    applied_ids = [o.order_id for o in applied]
    for start in range(0, len(applied_ids), 500):
        conn.execute(lines_t.delete().where(lines_t.c.order_id.in_(applied_ids[start : start + 500])))
    store.insert_if_absent(
        conn,
        lines_t,
        [
            {
                "order_id": o.order_id,
                "line_no": n,
                "order_number": o.order_number,
                "wms_sku": line.sku,
                "wms_warehouse_id": _wh(o.warehouse_id),
                "quantity": line.quantity,
                "allocated": line.allocated,
                "back_ordered": line.back_ordered,
            }
            for o in applied
            for n, line in enumerate(o.lines)
        ],
    )
    return applied


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("wms_orders"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="WMS orders changed since the cursor, applied monotonically (never moved backwards).",
)
def wms_orders(wms: WmsResource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("wms_orders")
    with wms.client() as client:
        client.remember_orders(_known_order_ids(db))
        batch = client.orders_changed_since(cursor)
    with db.write() as conn:
        applied = apply_orders(conn, batch.records)
        new_q = _quarantine(conn, "wms_orders", batch.quarantined)
        store.set_cursor(conn, "wms_orders", batch.next_cursor)
        by_status = dict(
            conn.execute(
                sa.select(store.wms_orders.c.status, sa.func.count()).group_by(store.wms_orders.c.status)
            ).all()
        )
    meta = _ingest_metadata(batch, len(applied), new_q, batch.next_cursor)
    meta |= {f"status/{k}": int(v) for k, v in sorted(by_status.items())}
    return dg.MaterializeResult(metadata=meta)


# --------------------------------------------------------------------------------- despatches


def despatch_rows(events: Sequence[DespatchEvent]) -> tuple[list[dict[str, Any]], list[QuarantinedRecord]]:
    """One row per despatched line; line_ref names order, shipment and SKU so it is stable on re-read."""
    rows, bad = [], []
    for e in events:
        shipment = e.shipment_id or e.dedupe_key[:16]
        seen: Counter[str] = Counter()
        for line in sorted(e.lines, key=lambda x: (x.sku, x.quantity)):
            seen[line.sku] += 1
            wh = _wh(line.warehouse_id)
            if wh is None:
                bad.append(
                    QuarantinedRecord(
                        vendor=e.vendor,
                        source="despatches",
                        payload=e.model_dump(mode="json"),
                        reason=f"order {e.order_number} line {line.sku}: warehouse_id: missing",
                        dedupe_key=e.dedupe_key,
                    )
                )
                continue
            line_ref = f"{e.order_id}:{shipment}:{line.sku}:{seen[line.sku]}"
            rows.append(
                {
                    "dedupe_key": f"wms:{e.order_number}:{line_ref}",
                    "order_number": e.order_number,
                    "line_ref": line_ref,
                    "wms_sku": line.sku,
                    "wms_warehouse_id": wh,
                    "quantity": line.quantity,
                    "status": e.raw_status.upper() if e.raw_status else e.status.value,
                    "event_at": e.despatched_at,
                }
            )
    return rows, bad


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("wms_despatches"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="WMS despatch events (one row per despatched line), deduplicated by key.",
)
def wms_despatches(wms: WmsResource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("wms_despatches")
    with wms.client() as client:
        client.remember_orders(_known_order_ids(db))
        batch = client.despatches_since(cursor)
    rows, bad = despatch_rows(batch.records)
    meta = _store_batch(
        db,
        "wms_despatches",
        rows,
        batch,
        bad,
        write=lambda c, r: store.insert_if_absent(c, core.wms_despatches, r),
    )
    with db.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(core.wms_despatches)).scalar() or 0
    meta |= {"lines_read": len(rows), "lines_total": int(total)}
    return dg.MaterializeResult(metadata=meta)


# ------------------------------------------------------------------------------------- stock


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("wms_stock_levels"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="WMS stock per SKU and warehouse (full snapshot): physical level excluding quarantine, "
    "quarantine, allocated.",
)
def wms_stock_levels(wms: WmsResource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    with wms.client() as client:
        batch = client.stock_snapshot()
    kept, bad = _by_warehouse(batch.records, "stock", lambda p: f"stock {p.sku}")
    rows = [
        {
            "wms_sku": p.sku,
            "wms_warehouse_id": wh,
            "level": p.physical,
            "quarantine": p.quarantine,
            "allocated": p.allocated,
            "snapshot_at": p.as_of,
        }
        for p, wh in kept
    ]
    frame = pd.DataFrame(rows, columns=core.frame_columns(core.wms_stock))
    written = db.replace_table("wms_stock", frame)
    with db.write() as conn:
        new_q = _quarantine(conn, "wms_stock_levels", [*batch.quarantined, *bad])
    meta = _ingest_metadata(batch, written, new_q, None)
    meta |= {
        "level_total": store.plot_number(sum(frame["level"], Decimal(0))),
        "quarantine_total": store.plot_number(sum(frame["quarantine"], Decimal(0))),
    }
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("wms_stock_movements"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="WMS stock ledger (receipts, write-offs, count corrections, quarantine moves...) "
    "since the cursor.",
)
def wms_stock_movements(wms: WmsResource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("wms_stock_movements")
    with wms.client() as client:
        batch = client.stock_movements_since(cursor)
    kept, bad = _by_warehouse(batch.records, "movements", lambda m: f"movement {m.movement_id}")
    rows = []
    for m, wh in kept:
        rows.append(
            {
                "dedupe_key": m.dedupe_key,
                "movement_id": m.movement_id,
                "wms_sku": m.sku,
                "wms_warehouse_id": wh,
                "quantity": m.quantity,
                "kind": m.kind.value,
                "raw_action": m.raw_action,
                "reason": (m.reason or "")[:200] or None,
                "order_id": m.order_id,
                "occurred_at": m.occurred_at,
            }
        )
    meta = _store_batch(
        db,
        "wms_stock_movements",
        rows,
        batch,
        bad,
        write=lambda c, r: store.insert_if_absent(c, store.wms_stock_movements, r),
    )
    meta |= _tally("kind", (r["kind"] for r in rows))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("wms_returns"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="WMS returns, one row per returned line with its grading (restock, quarantine, scrap).",
)
def wms_returns(wms: WmsResource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("wms_returns")
    with wms.client() as client:
        client.remember_orders(_known_order_ids(db))
        batch = client.returns_since(cursor)
    rows = [
        {
            "dedupe_key": r.dedupe_key,
            "return_id": r.return_id,
            "order_id": r.order_id,
            "order_number": r.order_number,
            "wms_sku": r.sku,
            "wms_warehouse_id": _wh(r.warehouse_id),
            "quantity": r.quantity,
            "disposition": r.disposition.value,
            "raw_status": r.raw_status,
            "reason": (r.reason or "")[:200] or None,
            "returned_at": r.returned_at,
        }
        for r in batch.records
    ]
    meta = _store_batch(
        db, "wms_returns", rows, batch, write=lambda c, r: store.insert_if_absent(c, store.wms_returns, r)
    )
    meta |= _tally("disposition", (r["disposition"] for r in rows))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("wms_receipts"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="WMS goods-in (ASN lines) with quantities booked in, latest state per line.",
)
def wms_receipts(wms: WmsResource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("wms_receipts")
    with wms.client() as client:
        batch = client.receipts_since(cursor)
    kept, bad = _by_warehouse(batch.records, "receipts", lambda r: f"ASN {r.asn_id} {r.sku}")
    rows = []
    for r, wh in kept:
        rows.append(
            {
                "asn_id": r.asn_id,
                "wms_sku": r.sku,
                "wms_warehouse_id": wh,
                "reference": (r.reference or "")[:60] or None,
                "quantity_expected": r.quantity_expected,
                "quantity_received": r.quantity_received,
                "quantity_booked": r.quantity_booked,
                "status": r.status.value,
                "raw_status": r.raw_status,
                "updated_at": r.updated_at,
            }
        )
    meta = _store_batch(
        db,
        "wms_receipts",
        rows,
        batch,
        bad,
        write=lambda c, r: store.upsert(c, store.wms_receipts, r, newer_by="updated_at"),
    )
    meta["booked_in"] = store.plot_number(sum((r["quantity_booked"] for r in rows), Decimal(0)))
    return dg.MaterializeResult(metadata=meta)
