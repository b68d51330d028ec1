"""Fulfilment: orders to the WMS, despatches and stock adjustments back to Sage.

All three are safe to re-run at any point. Manifests are stored insert-if-absent by order number and
marked sent only after the WMS answered (the WMS create is itself idempotent on the order number).
Despatches go through the outbox (one row per WMS despatch line), and each Sage call asks for a
TARGET cumulative despatched quantity per order line, so a run that died after Sage applied a
posting, but before the outbox said so, re-posts nothing when the row is claimed again.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at runtime.
import dataclasses
import os
import socket
import time
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
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitedError,
    RecordLockedError,
    Sage200Error,
    UnavailableError,
)
from sage_wms_pipeline.clients.wms.base import ManifestLine, OrderManifest, WmsValidationError
from sage_wms_pipeline.defs.freshness import freshness_for
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
    parse_order_number,
)
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline.storage.db import Database

GROUP = "fulfilment"
LIVE = "EnumDocumentStatusLive"


def _utc(value: Any) -> datetime:
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


# ---------------------------------------------------------------------------------- manifests


def live_orders_to_send(db: Database) -> pd.DataFrame:
    """Live Sage orders with a manifest still to send: none built yet (and the order is not in the WMS
    already under its own number), or built and not all sent (a part the WMS refused last time)."""
    o, m, w = store.sage_orders, core.order_manifests, store.wms_orders
    x = core.order_manifest_excluded
    # An order whose lines were all excluded (nothing to ship) has been planned too.
    planned = sa.union(sa.select(m.c.sage_order_id), sa.select(x.c.sage_order_id))
    unsent = sa.select(m.c.sage_order_id).where(m.c.sent_at.is_(None))
    in_wms = sa.select(w.c.order_number)
    query = (
        sa.select(o)
        .where(
            o.c.document_status == LIVE,
            sa.or_(
                sa.and_(o.c.id.not_in(planned), o.c.document_no.not_in(in_wms)),
                o.c.id.in_(unsent),
            ),
        )
        .order_by(o.c.id)
    )
    with db.read() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def sent_numbers(db: Database, sage_order_id: int) -> set[str]:
    m = core.order_manifests
    with db.read() as conn:
        return set(
            conn.execute(
                sa.select(m.c.order_number).where(
                    m.c.sage_order_id == sage_order_id, m.c.sent_at.is_not(None)
                )
            ).scalars()
        )


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
        lines=tuple(
            ManifestLine(sku=line.wms_sku, quantity=line.quantity, unit_price=line.unit_price)
            for line in m.lines
        ),
    )


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("order_manifests"),
    kinds={"mintsoft", "python"},
    deps=["sage_sales_orders", "sage_products", "wms_orders"],
    description="Live Sage orders not yet in the WMS become WMS orders: stock lines only, one per "
    "warehouse node; other lines recorded as excluded so manifest + excluded = Sage total. Idempotent.",
)
def order_manifests(
    wms: WmsResource, parity_db: ParityDatabase, policy: PolicyResource
) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    products = store.read_frame(db.engine, core.sage_products)
    if products.empty:
        raise dg.Failure("order_manifests: sage_products is empty; materialize sage_products first")
    product_types = dict(zip(products["sku"], products["product_type"], strict=True))
    orders = live_orders_to_send(db)
    lines = store.read_frame(
        db.engine,
        store.sage_order_lines,
        store.sage_order_lines.c.order_id.in_(orders["id"].tolist()) if len(orders) else sa.false(),
    )
    lines_by_order = {k: g.sort_values("id") for k, g in lines.groupby("order_id")} if len(lines) else {}
    created, existing, excluded = [], [], 0
    failing: dict[str, tuple[str, dict[str, Any]]] = {}
    with wms.client() as client:
        for header in orders.to_dict("records"):
            doc = header["document_no"]
            try:
                plan = build_manifests(
                    sage_order_model(
                        header, lines_by_order.get(header["id"], lines.iloc[0:0]), product_types
                    ),
                    pol,
                )
            except (ManifestError, ValueError) as exc:
                failing[doc] = ("manifest_refused", {"order": doc, "error": str(exc)})
                continue
            db.save_manifest_plan(plan)
            excluded += len(plan.excluded)
            payload = jsonutil.loads(header["payload"])
            already = sent_numbers(db, header["id"])
            for m in plan.manifests:
                if m.order_number in already:
                    continue
                try:
                    result = client.create_order(wms_manifest(m, payload))
                except WmsValidationError as exc:
                    kind = "unknown_sku" if "sku" in str(exc).lower() else "manifest_refused"
                    failing[m.order_number] = (
                        kind,
                        {"order": doc, "manifest": m.order_number, "error": str(exc)},
                    )
                    continue
                db.mark_manifest_sent(m.order_number, int(result.order_id))
                (created if result.created else existing).append(m.order_number)
    for record, (kind, context) in failing.items():
        db.record_exception(kind, record, context, "operations")
    for kind in ("manifest_refused", "unknown_sku"):
        db.resolve_exceptions(kind, [r for r, (k, _) in failing.items() if k == kind])
    with db.read() as conn:
        sent_total = (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(core.order_manifests)
                .where(core.order_manifests.c.sent_at.is_not(None))
            ).scalar()
            or 0
        )
    return dg.MaterializeResult(
        metadata={
            "orders_considered": len(orders),
            "manifests_created": len(created),
            "manifests_already_in_wms": len(existing),
            "manifests_refused": len(failing),
            "excluded_lines": excluded,
            "manifests_sent_total": int(sent_total),
            "created": dg.MetadataValue.text(", ".join(created[:50])),
            **policy_metadata(pol),
        }
    )


# ----------------------------------------------------------------------------- despatch postings


def wms_lines_at_trigger(db: Database, policy: Policy) -> list[dp.WmsDespatchLine]:
    """WMS lines at the policy's trigger not yet put in the outbox: despatch events, or order lines
    of orders at pick/pack. Lines already enqueued are skipped in SQL, so a run reads only new ones."""
    done = store.despatch_enqueued
    if policy.fulfilment_trigger == "despatch":
        d = core.wms_despatches
        fresh = ~sa.exists().where(done.c.source_key == d.c.dedupe_key)
        return [
            dp.WmsDespatchLine(
                order_number=r.order_number,
                line_ref=r.line_ref,
                wms_sku=r.wms_sku,
                wms_warehouse_id=int(r.wms_warehouse_id),
                quantity=Decimal(r.quantity),
                status=r.status,
                event_at=_utc(r.event_at),
            )
            for r in store.read_frame(db.engine, d, fresh).itertuples()
        ]
    o, lt = store.wms_orders, store.wms_order_lines
    statuses = sorted(dp.TRIGGER_STATUSES[policy.fulfilment_trigger])
    query = (
        sa.select(lt, o.c.raw_status, o.c.updated_at)
        .join(o, o.c.order_id == lt.c.order_id)
        .where(sa.func.upper(o.c.raw_status).in_(statuses))
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    lines = [
        dp.WmsDespatchLine(
            order_number=r.order_number,
            line_ref=f"{r.order_id}:order:{r.line_no}",
            wms_sku=r.wms_sku,
            wms_warehouse_id=int(r.wms_warehouse_id or 0),
            quantity=Decimal(r.quantity) - Decimal(r.back_ordered),
            status=r.raw_status.upper(),
            event_at=_utc(r.updated_at),
        )
        for r in rows
        if Decimal(r.quantity) - Decimal(r.back_ordered) > 0
    ]
    seen = enqueued_keys(db, [line.dedupe_key for line in lines])
    return [_line_warehouse(db, policy, line) for line in lines if line.dedupe_key not in seen]


def _line_warehouse(db: Database, policy: Policy, line: dp.WmsDespatchLine) -> dp.WmsDespatchLine:
    """The canonical WMS order line carries no warehouse of its own (only the order's), so a line of a
    mixed-warehouse order takes its warehouse from the one Sage line it can be (same order and SKU)."""
    sku = policy.sku_for_wms(line.wms_sku)
    if sku is None:
        return line
    lt = store.sage_order_lines
    doc = parse_order_number(line.order_number)[0]
    with db.read() as conn:
        names = set(
            conn.execute(
                sa.select(lt.c.warehouse).where(
                    lt.c.document_no.in_({doc, line.order_number}), lt.c.code == sku.sage_code
                )
            ).scalars()
        )
    try:
        current = policy.sage_warehouse(line.wms_warehouse_id)
    except KeyError:
        current = None
    if current in names or len(names) != 1:
        return line
    try:
        return dataclasses.replace(line, wms_warehouse_id=policy.wms_warehouse_id(names.pop()))
    except KeyError:
        return line


def enqueued_keys(db: Database, keys: list[str]) -> set[str]:
    done = store.despatch_enqueued
    found: set[str] = set()
    with db.read() as conn:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            found |= set(
                conn.execute(sa.select(done.c.source_key).where(done.c.source_key.in_(chunk))).scalars()
            )
    return found


def outbox_source_keys(db: Database, documents: Iterable[str]) -> set[str]:
    """Source keys already in the outbox for these Sage orders (a run that died before marking its
    lines enqueued must not have them planned again)."""
    out = core.despatch_outbox
    docs = sorted(set(documents))
    keys: set[str] = set()
    with db.read() as conn:
        for start in range(0, len(docs), 500):
            sources = conn.execute(
                sa.select(out.c.source).where(out.c.document_no.in_(docs[start : start + 500]))
            )
            keys |= {jsonutil.loads(s).get("dedupe_key", "") for s in sources.scalars()}
    return keys


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
        dp.SageOpenLine(
            document_no=r.document_no,
            order_id=int(r.order_id),
            line_id=int(r.id),
            sku=r.code,
            warehouse=r.warehouse or "",
            document_status=r.document_status,
            outstanding=Decimal(r.line_quantity) - Decimal(r.despatch_receipt_quantity),
        )
        for r in rows
    ]


def enqueue_postings(db: Database, policy: Policy) -> tuple[int, list[dp.Orphan]]:
    """Put every WMS line at the trigger that the outbox has not seen into the outbox.

    Lines are marked enqueued only after their postings are in the outbox (insert-if-absent), so a
    crash in between re-plans them and adds nothing twice. Orphans stay unmarked: they are looked at
    again next run, when the Sage order may have arrived.
    """
    lines = wms_lines_at_trigger(db, policy)
    if not lines:
        return 0, []
    docs = {line.order_number for line in lines} | {
        parse_order_number(line.order_number)[0] for line in lines
    }
    known = outbox_source_keys(db, docs)
    plan = dp.plan_postings(lines, open_sage_lines(db, docs), policy, known_keys=known)
    added = db.outbox_add(
        {
            "dedupe_key": p.dedupe_key,
            "order_id": p.order_id,
            "document_no": p.document_no,
            "line_id": p.line_id,
            "sku": p.sku,
            "warehouse": p.warehouse,
            "quantity": p.quantity,
            "source": {
                "dedupe_key": p.source.dedupe_key,
                "order_number": p.source.order_number,
                "line_ref": p.source.line_ref,
                "wms_sku": p.source.wms_sku,
                "wms_warehouse_id": p.source.wms_warehouse_id,
                "quantity": p.source.quantity,
                "event_at": p.source.event_at,
            },
        }
        for p in plan.postings
    )
    done = {p.source.dedupe_key for p in plan.postings} | {line.dedupe_key for line in plan.already_known}
    now = store.now_utc()
    with db.write() as conn:
        store.insert_if_absent(
            conn, store.despatch_enqueued, [{"source_key": k, "enqueued_at": now} for k in done]
        )
    return len(added), plan.orphans


# Failures that concern one order: it is deferred (lock, fault) or parked for a person (refused),
# and the run goes on with the others. Anything else (auth, permissions) fails the run.
_PER_ORDER = (
    RecordLockedError,
    BusinessRuleError,
    NotFoundError,
    InvalidRequestError,
    OutcomeUnknownError,
    UnavailableError,
    RateLimitedError,
)


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, RecordLockedError):
        return "lock"
    if isinstance(exc, (BusinessRuleError, NotFoundError, InvalidRequestError)):
        return "refused"  # Sage says no (status, quantity, order gone): retrying will not help
    return "transient"


def post_order(
    client: Sage200Client,
    db: Database,
    policy: Policy,
    order_id: int,
    claimed: list[dict[str, Any]],
    log: Any,
) -> tuple[str, dict[str, Any] | None]:
    """One confirm_despatch for an order: each line's target is the sum of every outbox row of that
    line that may be in Sage (all but stuck), so whatever already landed is never posted again.

    Returns the outcome ("posted", "lock", "transient" or "refused") and, when posted, the client's
    result plus `retried`: whether the order met a lock or fault (in this call or an earlier run) first."""
    line_ids = sorted({int(r["line_id"]) for r in claimed})
    out = core.despatch_outbox
    with db.read() as conn:
        rows = [
            r._asdict()
            for r in conn.execute(sa.select(out).where(out.c.line_id.in_(line_ids), out.c.state != "stuck"))
        ]
    targets: dict[int, Decimal] = defaultdict(Decimal)
    for r in rows:
        targets[int(r["line_id"])] += Decimal(r["quantity"])
    events = [jsonutil.loads(r["source"]).get("event_at") for r in claimed]
    when = max((_utc(e) for e in events if e), default=None)
    try:
        result = client.confirm_despatch(order_id, sorted(targets.items()), despatch_date=when)
    except _PER_ORDER as exc:
        kind = _failure_kind(exc)
        now = store.now_utc()
        for r in claimed:  # one order's rows come due again together, for one retry of the order
            db.outbox_fail(
                r["dedupe_key"],
                r["claim_token"],
                kind,  # type: ignore[arg-type]
                str(exc),
                policy,
                now=now,
                jitter_key=r["document_no"],
            )
        log.warning(f"despatch of Sage order {claimed[0]['document_no']} {kind}: {exc}")
        return kind, None
    # Everything counted in the targets is now in Sage, including rows claimed by a run that died.
    for r in rows:
        db.outbox_mark_posted(r["dedupe_key"])
    deferrals = max(int(r["attempts"] or 1) for r in claimed) - 1  # a claim counts as an attempt
    result["retried"] = result.get("attempts", 1) > 1 or deferrals > 0
    if result["retried"]:
        # The record lock (or fault) a person would otherwise ask about: met, retried, cleared.
        log.info(
            f"Sage order {result.get('document_no') or claimed[0]['document_no']} posted on attempt "
            f"{result.get('attempts', 1)} of this run after {deferrals} earlier deferral(s)"
        )
    if result.get("over_target"):
        db.record_exception(
            "despatch_over_target",
            claimed[0]["document_no"],
            {"order": claimed[0]["document_no"], "lines": result["over_target"]},
            "finance",
        )
    return "posted", result


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("despatch_postings"),
    kinds={"sage200", "python"},
    pool="sage_writes",
    deps=["wms_despatches", "wms_orders", "sage_sales_orders"],
    description="WMS despatches at the policy's trigger become sop_confirm_despatch calls through the "
    "outbox: nothing lost when a run dies, nothing posted twice when it reruns. Locked orders are deferred "
    "and "
    "retried; locked past the deadline or refused by Sage they become stuck sync exceptions.",
)
def despatch_postings(
    context: dg.AssetExecutionContext,
    sage: Sage200Resource,
    parity_db: ParityDatabase,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    added, orphans = enqueue_postings(db, pol)
    for orphan in orphans:
        db.record_exception(
            "orphaned_shipment",
            orphan.source.dedupe_key,
            {
                "order_number": orphan.source.order_number,
                "wms_sku": orphan.source.wms_sku,
                "wms_warehouse_id": orphan.source.wms_warehouse_id,
                "quantity": orphan.source.quantity,
                "unposted_quantity": orphan.quantity,
                "reason": orphan.reason,
            },
            "operations",
        )
    db.resolve_exceptions("orphaned_shipment", [o.source.dedupe_key for o in orphans])
    worker = f"{socket.gethostname()}:{os.getpid()}:{context.run_id[:8]}"
    lease = pd.Timedelta(seconds=pol.outbox.lease_seconds).to_pytimedelta()
    outcomes: dict[str, int] = defaultdict(int)
    latencies: list[float] = []
    deferred: set[str] = set()

    def drain(client: Sage200Client) -> None:
        for _ in range(10_000):  # every pass posts, defers or parks what it claimed, so this ends
            claimed = db.outbox_claim(worker, limit=200, lease=lease)
            if not claimed:
                return
            by_order: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for r in claimed:
                by_order[int(r["order_id"])].append(r)
            for order_id, rows in by_order.items():
                try:
                    outcome, result = post_order(client, db, pol, order_id, rows, context.log)
                except Sage200Error:
                    for r in rows:  # auth or config trouble: leave the rows due, fail the run loudly
                        db.outbox_fail(r["dedupe_key"], r["claim_token"], "transient", "run failed", pol)
                    raise
                outcomes[outcome] += len(rows)
                if outcome in ("lock", "transient"):
                    deferred.update(r["dedupe_key"] for r in rows)
                if result is not None and result["retried"]:
                    outcomes["retried_then_posted"] += 1
                if outcome == "posted":
                    now = store.now_utc()
                    for r in rows:
                        event_at = jsonutil.loads(r["source"]).get("event_at")
                        if event_at:
                            latencies.append((now - _utc(event_at)).total_seconds())

    # A short retry budget per call, so one locked order does not hold up the others: it is deferred
    # through the outbox. A desktop lock usually clears within a minute, so the run then waits (up to
    # the policy's lock_linger_seconds) for deferred rows to come due and tries them again, rather than
    # leaving them to the retry sensor's next run; what is still locked after that is left to it.
    with sage.client(
        max_attempts=min(sage.max_attempts, 3), deadline_seconds=min(sage.deadline_seconds, 20)
    ) as client:
        drain(client)
        linger_until = time.monotonic() + pol.outbox.lock_linger_seconds
        while deferred and (due := db.outbox_next_due()) is not None:
            wait = max(0.0, (due - store.now_utc()).total_seconds())
            if time.monotonic() + wait > linger_until:
                break
            time.sleep(wait + 0.05)
            drain(client)
    counts = defaultdict(int)
    for r in db.outbox_rows():
        counts[r["state"]] += 1
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    return dg.MaterializeResult(
        metadata={
            "outbox_added": added,
            "orphans": len(orphans),
            "posted_this_run": outcomes["posted"],
            "deferred_this_run": len(deferred),
            "refused_this_run": outcomes["refused"],
            # Orders that met a lock or fault (in this run, or deferred by an earlier one) and then posted.
            "retried_then_posted_this_run": outcomes["retried_then_posted"],
            "sage_retries_this_run": client.stats.retries,
            **{
                f"outbox/{s}": counts.get(s, 0) for s in ("pending", "posting", "posted", "deferred", "stuck")
            },
            "stuck_records": counts.get("stuck", 0),
            "despatch_latency_p50_seconds": round(p50, 1),
            "despatch_latency_p95_seconds": round(p95, 1),
            "policy/fulfilment_trigger": pol.fulfilment_trigger,
            "policy/lock_deadline_minutes": pol.lock_deadline_minutes,
        }
    )


# ------------------------------------------------------------------------------ stock adjustments

ADJUSTING_MOVEMENTS = ("SCRAP", "ADJUSTMENT_IN", "ADJUSTMENT_OUT")


def _unit_cost(product: dict[str, Any] | None) -> Decimal:
    if product is None:
        return Decimal(0)
    if product["costing_method"] == "Standard":
        return Decimal(product["standard_cost"])
    return Decimal(product["average_buying_price"])  # Average; FIFO at its average as an estimate


def _sage_keys(
    policy: Policy, wms_sku: str, wms_warehouse_id: int, qty: Decimal
) -> tuple[str, str, Decimal] | None:
    sku = policy.sku_for_wms(wms_sku)
    if sku is None:
        return None
    try:
        warehouse = policy.sage_warehouse(int(wms_warehouse_id))
    except KeyError:
        return None
    sage_qty = dp.to_sage_quantity(qty, sku.wms_units_per_sage_unit)
    return None if sage_qty is None else (sku.sage_code, warehouse, sage_qty)


def adjustment_candidates(db: Database, policy: Policy) -> tuple[list[dict[str, Any]], list[str]]:
    """New adjustments from WMS receipts not in Sage, restocked returns and write-offs/count corrections."""
    products = {r["sku"]: r for r in store.read_frame(db.engine, core.sage_products).to_dict("records")}
    goods_in = store.read_frame(db.engine, store.sage_goods_in)
    in_sage = set(zip(goods_in["reference"], goods_in["sku"], goods_in["warehouse"], strict=True))
    existing = store.read_frame(db.engine, store.stock_adjustments)
    # Receipts are keyed "<base>#<n>": a receipt booked in bit by bit adds one row per increment.
    done: dict[str, Decimal] = defaultdict(Decimal)
    parts: dict[str, int] = defaultdict(int)
    for r in existing.itertuples():
        base = r.key.rsplit("#", 1)[0]
        done[base] += Decimal(r.quantity)
        parts[base] += 1
    now = store.now_utc()
    out: list[dict[str, Any]] = []
    unmapped: list[str] = []

    def add(
        source: str,
        base_key: str,
        reference: str | None,
        wms_sku: str,
        wh: int,
        qty: Decimal,
        occurred: Any,
        cumulative: bool = False,
    ) -> None:
        keys = _sage_keys(policy, wms_sku, wh, qty)
        if keys is None:
            unmapped.append(base_key)
            return
        sku, warehouse, sage_qty = keys
        if cumulative:  # only the part not yet adjusted
            sage_qty -= done[base_key]
            if sage_qty == 0:
                return
            key = f"{base_key}#{parts[base_key]}"
            parts[base_key] += 1
        elif base_key in done:
            return
        else:
            key = base_key
        product = products.get(sku)
        cost = _unit_cost(product)
        stock_code = product["stock_nominal_code"] if product else ""
        other = {
            "receipt": "GRNI accrual",
            "return": "cost of sales",
            "movement": "stock write-off / variance",
        }
        dr, cr = (stock_code, other[source]) if sage_qty > 0 else (other[source], stock_code)
        route = (
            "sage_decides"
            if source == "return" and policy.restock.authority == "sage"
            else policy.restock.adjustments_route
        )
        out.append(
            {
                "key": key,
                "source": source,
                "reference": (reference or "")[:100] or None,
                "sku": sku,
                "warehouse": warehouse,
                "quantity": sage_qty,
                "unit_cost": cost,
                "value": (sage_qty * cost).quantize(Decimal("0.01")),
                "debit_nominal": dr,
                "credit_nominal": cr,
                "route": route,
                "state": "proposed" if route != "stocktake" else "pending",
                "detail": None,
                "occurred_at": _utc(occurred),
                "created_at": now,
                "posted_at": None,
            }
        )

    for r in store.read_frame(db.engine, store.wms_receipts).itertuples():
        if Decimal(r.quantity_booked) <= 0:
            continue
        sage = _sage_keys(policy, r.wms_sku, r.wms_warehouse_id, Decimal(r.quantity_booked))
        if sage is not None and (r.reference, sage[0], sage[1]) in in_sage:
            continue  # Sage booked it in itself (POP receipt with the same reference)
        add(
            "receipt",
            f"receipt:{r.asn_id}:{r.wms_sku}:{r.wms_warehouse_id}",
            r.reference,
            r.wms_sku,
            r.wms_warehouse_id,
            Decimal(r.quantity_booked),
            r.updated_at,
            cumulative=True,
        )
    for r in store.read_frame(db.engine, store.wms_returns).itertuples():
        if r.disposition == "RESTOCK" and r.wms_warehouse_id is not None and not pd.isna(r.wms_warehouse_id):
            add(
                "return",
                f"return:{r.dedupe_key}",
                r.order_number,
                r.wms_sku,
                int(r.wms_warehouse_id),
                Decimal(r.quantity),
                r.returned_at,
            )
    moves = store.read_frame(
        db.engine, store.wms_stock_movements, store.wms_stock_movements.c.kind.in_(ADJUSTING_MOVEMENTS)
    )
    for r in moves.itertuples():
        if Decimal(r.quantity) != 0:
            add(
                "movement",
                f"movement:{r.dedupe_key}",
                r.reason,
                r.wms_sku,
                int(r.wms_warehouse_id),
                Decimal(r.quantity),
                r.occurred_at,
            )
    return out, unmapped


def post_stocktakes(client: Sage200Client, db: Database, log: Any) -> tuple[int, int]:
    """Pending adjustments -> one Sage stocktake per warehouse (deltas). Rows are marked 'posting'
    first: a run that dies mid-stocktake leaves them for a person (never posted twice)."""
    t = store.stock_adjustments
    with db.write() as conn:
        conn.execute(
            t.update()
            .where(t.c.state == "posting")
            .values(
                state="needs_review",
                detail="a run died while posting this stocktake; check Sage before retrying",
            )
        )
        pending = [
            r._asdict() for r in conn.execute(sa.select(t).where(t.c.state.in_(("pending", "failed"))))
        ]
        keys = [r["key"] for r in pending]
        if keys:
            conn.execute(t.update().where(t.c.key.in_(keys)).values(state="posting"))
    if not pending:
        return 0, 0
    product_ids = {p["code"]: int(p["id"]) for p in client.list("products", select="id,code")}
    warehouse_ids = {w["name"]: int(w["id"]) for w in client.list("warehouses", select="id,name")}
    posted = failed = 0
    by_wh: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in pending:
        by_wh[r["warehouse"]].append(r)
    for warehouse, rows in sorted(by_wh.items()):
        deltas: dict[int, Decimal] = defaultdict(Decimal)
        for r in rows:
            deltas[product_ids[r["sku"]]] += Decimal(r["quantity"])
        items = [StockCount(product_id=pid, quantity=q, kind="delta") for pid, q in deltas.items() if q != 0]
        try:
            result = client.adjust_stock_via_stocktake(
                warehouse_ids[warehouse], items, narrative="WMS adjustments (sage-wms-pipeline)"
            )
            state, detail, when = "posted", f"stocktake {result.stocktake_name}", store.now_utc()
            posted += len(rows)
        except (Sage200Error, KeyError, NotImplementedError) as exc:
            state, detail, when = "failed", f"{type(exc).__name__}: {exc}"[:1000], None
            failed += len(rows)
            log.warning(f"stocktake for {warehouse} failed: {exc}")
        with db.write() as conn:
            conn.execute(
                t.update()
                .where(t.c.key.in_([r["key"] for r in rows]))
                .values(state=state, detail=detail, posted_at=when)
            )
    return posted, failed


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("stock_adjustments"),
    kinds={"sage200", "python"},
    pool="sage_writes",
    deps=["wms_receipts", "wms_returns", "wms_stock_movements", "sage_products"],
    description="WMS receipts not in Sage, restocked returns, write-offs and count corrections become Sage "
    "stocktake adjustments or proposed adjustments with nominal codes, per the restock authority.",
)
def stock_adjustments(
    context: dg.AssetExecutionContext,
    sage: Sage200Resource,
    parity_db: ParityDatabase,
    policy: PolicyResource,
) -> dg.MaterializeResult:
    pol = policy.load()
    db = parity_db.database()
    rows, unmapped = adjustment_candidates(db, pol)
    with db.write() as conn:
        added = store.insert_if_absent(conn, store.stock_adjustments, rows)
    posted = failed = 0
    if pol.restock.adjustments_route == "stocktake":
        with sage.client() as client:
            posted, failed = post_stocktakes(client, db, context.log)
    for key in unmapped:
        db.record_exception(
            "unmapped_adjustment",
            key,
            {"source": key, "reason": "no Sage mapping for the WMS SKU or warehouse"},
            "operations",
        )
    db.resolve_exceptions("unmapped_adjustment", unmapped)
    table = store.read_frame(db.engine, store.stock_adjustments)
    proposed = table[table["state"] == "proposed"]
    value = sum(proposed["value"], Decimal(0)) if len(proposed) else Decimal(0)
    return dg.MaterializeResult(
        metadata={
            "adjustments_added": added,
            "posted_this_run": posted,
            "failed_this_run": failed,
            "proposed_open": len(proposed),
            "proposed_value_gbp": dg.MetadataValue.text(f"£{value}"),
            "unmapped": len(unmapped),
            **{f"state/{k}": int(v) for k, v in table["state"].value_counts().items()},
            **policy_metadata(pol),
        }
    )
