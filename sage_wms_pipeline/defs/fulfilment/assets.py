"""Fulfilment: orders to the WMS, despatches and stock adjustments back to Sage.

All three are safe to re-run at any point. Manifests are stored insert-if-absent by order number and
marked sent only after the WMS answered (the WMS create is itself idempotent on the order number).
Despatches go through the outbox (one row per WMS despatch line), and each Sage call asks for a
TARGET cumulative despatched quantity per order line, so a run that died after Sage applied a
posting, but before the outbox said so, re-posts nothing when the row is claimed again.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200.client import Sage200Client, StockCount
from sage_wms_pipeline.clients.sage200.errors import (
    BusinessRuleError,
    OutcomeUnknownError,
    RateLimitedError,
    RecordLockedError,
    Sage200Error,
    UnavailableError,
)
from sage_wms_pipeline.clients.wms.base import ManifestLine, OrderManifest, WmsError, WmsValidationError
from sage_wms_pipeline.defs.ingest import store
from sage_wms_pipeline.defs.resources import (
    ParityDatabase,
    PolicyResource,
    Sage200Resource,
    WmsResource,
    policy_metadata,
)
from sage_wms_pipeline.domain import despatch_posting as dp
from sage_wms_pipeline.domain.manifests import (
    Manifest,
    ManifestError,
    SageOrder,
    SageOrderLine,
    build_manifests,
)
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline.storage.db import Database

GROUP = "fulfilment"
LIVE = "EnumDocumentStatusLive"


def _utc(value: Any) -> datetime:
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


# ---------------------------------------------------------------------------------- manifests


def live_orders_to_send(db: Database) -> pd.DataFrame:
    """Live Sage orders with no manifest sent yet and not already in the WMS under their number."""
    o, m, w = store.sage_orders, core.order_manifests, store.wms_orders
    sent = sa.select(m.c.sage_order_id).where(m.c.sent_at.is_not(None))
    in_wms = sa.select(w.c.order_number)
    query = sa.select(o).where(
        o.c.document_status == LIVE, o.c.id.not_in(sent), o.c.document_no.not_in(in_wms)
    ).order_by(o.c.id)
    with db.read() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def sage_order_model(header: dict[str, Any], lines: pd.DataFrame, product_types: dict[str, str]) -> SageOrder:
    return SageOrder(
        id=int(header["id"]),
        document_no=header["document_no"],
        document_status=header["document_status"],
        total_net_value=header["total_net_value"],
        lines=[
            SageOrderLine(
                id=int(r.id),
                line_type=r.line_type,
                code=r.code,
                product_type=product_types.get(r.code) if r.code else None,
                warehouse_name=r.warehouse,
                line_quantity=r.line_quantity,
                selling_unit_price=r.selling_unit_price,
                line_total_value=r.line_total_value,
            )
            for r in lines.itertuples()
        ],
    )


def wms_manifest(m: Manifest, payload: dict[str, Any]) -> OrderManifest:
    address = payload.get("delivery_address") or {}
    name = (address.get("postal_name") or (payload.get("customer") or {}).get("name") or "").strip()
    first, _, last = name.partition(" ")
    return OrderManifest(
        order_number=m.order_number,
        external_reference=m.order_number,
        warehouse_id=str(m.wms_warehouse_id),
        first_name=first,
        last_name=last,
        company_name=name,
        address_1=address.get("address_1") or "",
        town=address.get("city") or "",
        postcode=address.get("postcode") or "",
        country=address.get("country") or "GB",
        email=address.get("email") or None,
        lines=tuple(ManifestLine(sku=line.wms_sku, quantity=line.quantity, unit_price=line.unit_price)
                    for line in m.lines),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"mintsoft", "python"},
    deps=["sage_sales_orders", "sage_products", "wms_orders"],
    description="Live Sage orders not yet in the WMS become WMS orders: stock lines only, one per "
    "warehouse node; other lines recorded as excluded so manifest + excluded = Sage total. Idempotent.",
)
def order_manifests(wms: WmsResource, parity_db: ParityDatabase, policy: PolicyResource) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    products = store.read_frame(db.engine, core.sage_products)
    if products.empty:
        raise dg.Failure("order_manifests: sage_products is empty; materialize sage_products first")
    product_types = dict(zip(products["sku"], products["product_type"], strict=True))
    orders = live_orders_to_send(db)
    lines = store.read_frame(db.engine, store.sage_order_lines,
                             store.sage_order_lines.c.order_id.in_(orders["id"].tolist()) if len(orders) else sa.false())
    lines_by_order = {k: g.sort_values("id") for k, g in lines.groupby("order_id")} if len(lines) else {}
    created, existing, refused, excluded = [], [], [], 0
    failing: dict[str, tuple[str, dict[str, Any]]] = {}
    with wms.client() as client:
        for header in orders.to_dict("records"):
            doc = header["document_no"]
            try:
                plan = build_manifests(
                    sage_order_model(header, lines_by_order.get(header["id"], lines.iloc[0:0]), product_types), pol
                )
            except (ManifestError, ValueError) as exc:
                failing[doc] = ("manifest_refused", {"order": doc, "error": str(exc)})
                continue
            db.save_manifest_plan(plan)
            excluded += len(plan.excluded)
            payload = jsonutil.loads(header["payload"])
            for m in plan.manifests:
                try:
                    result = client.create_order(wms_manifest(m, payload))
                except WmsValidationError as exc:
                    kind = "unknown_sku" if "sku" in str(exc).lower() else "manifest_refused"
                    failing[m.order_number] = (kind, {"order": doc, "manifest": m.order_number, "error": str(exc)})
                    refused.append(m.order_number)
                    continue
                db.mark_manifest_sent(m.order_number, int(result.order_id))
                (created if result.created else existing).append(m.order_number)
    for record, (kind, context) in failing.items():
        db.record_exception(kind, record, context, "operations")
    for kind in ("manifest_refused", "unknown_sku"):
        db.resolve_exceptions(kind, [r for r, (k, _) in failing.items() if k == kind])
    with db.read() as conn:
        sent_total = conn.execute(sa.select(sa.func.count()).select_from(core.order_manifests).where(
            core.order_manifests.c.sent_at.is_not(None))).scalar() or 0
    return dg.MaterializeResult(metadata={
        "orders_considered": len(orders),
        "manifests_created": len(created),
        "manifests_already_in_wms": len(existing),
        "manifests_refused": len(refused) + sum(1 for k, _ in failing.values() if k == "manifest_refused"),
        "excluded_lines": excluded,
        "manifests_sent_total": int(sent_total),
        "created": dg.MetadataValue.text(", ".join(created[:50])),
        **policy_metadata(pol),
    })


# ----------------------------------------------------------------------------- despatch postings


def wms_lines_at_trigger(db: Database, policy: Policy) -> list[dp.WmsDespatchLine]:
    """WMS lines that have reached the policy's trigger: despatch events, or order lines at pick/pack."""
    if policy.fulfilment_trigger == "despatch":
        frame = store.read_frame(db.engine, core.wms_despatches)
        return [
            dp.WmsDespatchLine(order_number=r.order_number, line_ref=r.line_ref, wms_sku=r.wms_sku,
                               wms_warehouse_id=int(r.wms_warehouse_id), quantity=Decimal(r.quantity),
                               status=r.status, event_at=_utc(r.event_at))
            for r in frame.itertuples()
        ]
    o, lt = store.wms_orders, store.wms_order_lines
    query = sa.select(lt, o.c.raw_status, o.c.updated_at).join(o, o.c.order_id == lt.c.order_id)
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [
        dp.WmsDespatchLine(order_number=r.order_number, line_ref=f"{r.order_id}:order:{r.line_no}",
                           wms_sku=r.wms_sku, wms_warehouse_id=int(r.wms_warehouse_id or 0),
                           quantity=Decimal(r.quantity) - Decimal(r.back_ordered), status=r.raw_status.upper(),
                           event_at=_utc(r.updated_at))
        for r in rows
        if Decimal(r.quantity) - Decimal(r.back_ordered) > 0
    ]


def known_source_keys(db: Database) -> set[str]:
    with db.read() as conn:
        sources = conn.execute(sa.select(core.despatch_outbox.c.source)).scalars().all()
    return {jsonutil.loads(s).get("dedupe_key", "") for s in sources}


def open_sage_lines(db: Database, documents: Iterable[str]) -> list[dp.SageOpenLine]:
    docs = sorted(set(documents))
    if not docs:
        return []
    o, lt = store.sage_orders, store.sage_order_lines
    query = (
        sa.select(lt, o.c.document_status)
        .join(o, o.c.id == lt.c.order_id)
        .where(lt.c.document_no.in_(docs), lt.c.line_type == "EnumLineTypeStandard")
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [
        dp.SageOpenLine(document_no=r.document_no, order_id=int(r.order_id), line_id=int(r.id), sku=r.code,
                        warehouse=r.warehouse or "", document_status=r.document_status,
                        outstanding=Decimal(r.line_quantity) - Decimal(r.despatch_receipt_quantity))
        for r in rows
    ]


def enqueue_postings(db: Database, policy: Policy) -> tuple[int, list[dp.Orphan]]:
    """Put every WMS line at the trigger that the outbox has not seen into the outbox."""
    lines = wms_lines_at_trigger(db, policy)
    known = known_source_keys(db)
    new = [line for line in lines if line.dedupe_key not in known]
    docs = {line.order_number for line in new} | {line.order_number.rpartition("-")[0] for line in new}
    plan = dp.plan_postings(new, open_sage_lines(db, docs - {""}), policy, known_keys=known)
    added = db.outbox_add(
        {"dedupe_key": p.dedupe_key, "order_id": p.order_id, "document_no": p.document_no, "line_id": p.line_id,
         "sku": p.sku, "warehouse": p.warehouse, "quantity": p.quantity,
         "source": {"dedupe_key": p.source.dedupe_key, "order_number": p.source.order_number,
                    "line_ref": p.source.line_ref, "wms_sku": p.source.wms_sku,
                    "wms_warehouse_id": p.source.wms_warehouse_id, "quantity": p.source.quantity,
                    "event_at": p.source.event_at}}
        for p in plan.postings
    )
    return len(added), plan.orphans


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, RecordLockedError):
        return "lock"
    if isinstance(exc, BusinessRuleError):
        return "refused"
    return "transient"


def post_order(
    client: Sage200Client, db: Database, policy: Policy, order_id: int, claimed: list[dict[str, Any]],
    log: Any,
) -> tuple[str, dict[str, Any] | None]:
    """One confirm_despatch for an order: each line's target is the sum of every outbox row of that
    line that may be in Sage (all but stuck), so whatever already landed is never posted again."""
    line_ids = sorted({int(r["line_id"]) for r in claimed})
    out = core.despatch_outbox
    with db.read() as conn:
        rows = [r._asdict() for r in conn.execute(
            sa.select(out).where(out.c.line_id.in_(line_ids), out.c.state != "stuck"))]
    targets: dict[int, Decimal] = defaultdict(Decimal)
    for r in rows:
        targets[int(r["line_id"])] += Decimal(r["quantity"])
    events = [jsonutil.loads(r["source"]).get("event_at") for r in claimed]
    when = max((_utc(e) for e in events if e), default=None)
    try:
        result = client.confirm_despatch(order_id, sorted(targets.items()), despatch_date=when)
    except (RecordLockedError, BusinessRuleError, OutcomeUnknownError, UnavailableError, RateLimitedError) as exc:
        kind = _failure_kind(exc)
        for r in claimed:
            db.outbox_fail(r["dedupe_key"], r["claim_token"], kind, str(exc), policy)  # type: ignore[arg-type]
        log.warning(f"despatch of Sage order {claimed[0]['document_no']} {kind}: {exc}")
        return kind, None
    # Everything counted in the targets is now in Sage, including rows claimed by a run that died.
    for r in rows:
        db.outbox_mark_posted(r["dedupe_key"])
    if result.get("over_target"):
        db.record_exception("despatch_over_target", claimed[0]["document_no"],
                            {"order": claimed[0]["document_no"], "lines": result["over_target"]}, "finance")
    return "posted", result


@dg.asset(
    group_name=GROUP,
    kinds={"sage200", "python"},
    pool="sage_writes",
    deps=["wms_despatches", "wms_orders", "sage_sales_orders"],
    description="WMS despatches at the policy's trigger become sop_confirm_despatch calls through the outbox: "
    "nothing lost when a run dies, nothing posted twice when it reruns. Locked orders are deferred and "
    "retried; locked past the deadline or refused by Sage they become stuck sync exceptions.",
)
def despatch_postings(
    context: dg.AssetExecutionContext, sage: Sage200Resource, parity_db: ParityDatabase, policy: PolicyResource
) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    added, orphans = enqueue_postings(db, pol)
    for orphan in orphans:
        db.record_exception("orphaned_shipment", orphan.source.dedupe_key, {
            "order_number": orphan.source.order_number, "wms_sku": orphan.source.wms_sku,
            "wms_warehouse_id": orphan.source.wms_warehouse_id, "quantity": orphan.source.quantity,
            "unposted_quantity": orphan.quantity, "reason": orphan.reason}, "operations")
    db.resolve_exceptions("orphaned_shipment", [o.source.dedupe_key for o in orphans])
    worker = f"{socket.gethostname()}:{os.getpid()}:{context.run_id[:8]}"
    lease = pd.Timedelta(seconds=pol.outbox.lease_seconds).to_pytimedelta()
    outcomes: dict[str, int] = defaultdict(int)
    latencies: list[float] = []
    # A short retry budget per call: a locked order is deferred through the outbox, not waited on.
    with sage.client(
        max_attempts=min(sage.max_attempts, 3), deadline_seconds=min(sage.deadline_seconds, 20)
    ) as client:
        for _ in range(10_000):  # every pass posts, defers or parks what it claimed, so this ends
            claimed = db.outbox_claim(worker, limit=200, lease=lease)
            if not claimed:
                break
            by_order: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for r in claimed:
                by_order[int(r["order_id"])].append(r)
            for order_id, rows in by_order.items():
                try:
                    outcome, _ = post_order(client, db, pol, order_id, rows, context.log)
                except Sage200Error:
                    for r in rows:  # auth or config trouble: leave the rows due, fail the run loudly
                        db.outbox_fail(r["dedupe_key"], r["claim_token"], "transient", "run failed", pol)
                    raise
                outcomes[outcome] += len(rows)
                if outcome == "posted":
                    now = store.now_utc()
                    latencies += [(now - _utc(jsonutil.loads(r["source"])["event_at"])).total_seconds()
                                  for r in rows if jsonutil.loads(r["source"]).get("event_at")]
    counts = defaultdict(int)
    for r in db.outbox_rows():
        counts[r["state"]] += 1
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    return dg.MaterializeResult(metadata={
        "outbox_added": added,
        "orphans": len(orphans),
        "posted_this_run": outcomes["posted"],
        "deferred_this_run": outcomes["lock"] + outcomes["transient"],
        "refused_this_run": outcomes["refused"],
        **{f"outbox/{s}": counts.get(s, 0) for s in ("pending", "posting", "posted", "deferred", "stuck")},
        "stuck_records": counts.get("stuck", 0),
        "despatch_latency_p50_seconds": round(p50, 1),
        "despatch_latency_p95_seconds": round(p95, 1),
        "policy/fulfilment_trigger": pol.fulfilment_trigger,
        "policy/lock_deadline_minutes": pol.lock_deadline_minutes,
    })
