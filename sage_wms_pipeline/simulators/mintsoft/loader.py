"""Load a scenario into the Mintsoft simulator: the WMS side of the shared catalogue and stock."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, insert

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.simulators.mintsoft import db
from sage_wms_pipeline.simulators.mintsoft.warehouse import (
    CANCELLED,
    DAY_MS,
    DEFAULT_FAULTS,
    DESPATCHED,
    HOUR_MS,
    ONBACKORDER,
    STATUS_ID,
    Tx,
    bad,
    set_meta,
)

DEMO_USER = ("sandbox", "sandbox")
SHRINK_HOUR = 18


def _whole(value: Decimal, where: str) -> int:
    if value != value.to_integral_value():
        raise bad(f"{where}: {value} is not a whole number of WMS units")
    return int(value)


def check(sc: Scenario) -> None:
    """Refuse, naming the record and field, anything the WMS side cannot load."""
    groups = {g.code: g for g in sc.product_groups}
    codes: dict[str, str] = {}
    for i, p in enumerate(sc.products):
        if p.group not in groups:
            raise bad(f"products[{i}].group: unknown product group {p.group!r}")
        if p.wms_code in codes:
            raise bad(f"products[{i}].wms_sku: WMS SKU {p.wms_code!r} is also used by {codes[p.wms_code]!r}")
        codes[p.wms_code] = p.sku
    ids = [w.wms_warehouse_id for w in sc.warehouses]
    if len(set(ids)) != len(ids):
        raise bad("warehouses: wms_warehouse_id values must be unique")
    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(sc.opening_stock):
        if (s.sku, s.warehouse) in seen:
            raise bad(f"opening_stock[{i}]: second row for {s.sku} in {s.warehouse}")
        seen.add((s.sku, s.warehouse))


def load_scenario(conn: Connection, sc: Scenario, now_ms: int | None = None) -> None:
    """Replace everything with `sc`. Runs inside the caller's transaction, so a refusal loads nothing."""
    check(sc)
    for table in db.ALL_TABLES:
        conn.execute(delete(table))
    start = db.to_ms(sc.starts_at)
    set_meta(conn, "behaviour", sc.behaviour.model_dump(mode="json"))
    set_meta(conn, "faults", {**DEFAULT_FAULTS, **sc.faults.wms.model_dump(), "seed": sc.behaviour.seed})
    first_shrink = start - start % DAY_MS + SHRINK_HOUR * HOUR_MS
    set_meta(conn, "next_shrink_ms", first_shrink if first_shrink > start else first_shrink + DAY_MS)
    set_meta(conn, "processed_ms", start)
    conn.execute(insert(db.users).values(username=DEMO_USER[0], password=DEMO_USER[1]))
    tx = Tx(conn, start)

    groups = {g.code: g for g in sc.product_groups}
    wh = {w.sage_name: w.wms_warehouse_id for w in sc.warehouses}
    for w in sc.warehouses:
        conn.execute(
            insert(db.warehouses).values(id=w.wms_warehouse_id, name=w.wms_name, sage_name=w.sage_name)
        )
    pids: dict[str, int] = {}
    units: dict[str, int] = {}
    for p in sc.products:
        if groups[p.group].product_type != "Stock":
            continue  # services and sundries are not held in the WMS
        pids[p.sku] = conn.execute(
            insert(db.products).values(
                sku=p.wms_code,
                name=p.name,
                barcode=p.barcode,
                sage_sku=p.sku,
                units_per_sage_unit=p.wms_units_per_sage_unit,
            )
        ).inserted_primary_key[0]
        units[p.sku] = p.wms_units_per_sage_unit

    def product(sku: str, where: str) -> int:
        if sku not in pids:
            raise bad(f"{where}: {sku!r} is not a Stock product of this scenario")
        return pids[sku]

    def warehouse(name: str, where: str) -> int:
        if name not in wh:
            raise bad(f"{where}: unknown warehouse {name!r}")
        return wh[name]

    for i, s in enumerate(sc.opening_stock):
        pid = product(s.sku, f"opening_stock[{i}].sku")
        wid = warehouse(s.warehouse, f"opening_stock[{i}].warehouse")
        on_hand = s.wms_on_hand
        if on_hand is None:
            on_hand = (s.sage_confirmed + s.sage_unconfirmed) * units[s.sku]
        conn.execute(
            insert(db.stock).values(
                product_id=pid,
                warehouse_id=wid,
                level=_whole(on_hand, f"opening_stock[{i}].wms_on_hand"),
                allocated=0,
                quarantine=_whole(s.wms_quarantine, f"opening_stock[{i}].wms_quarantine"),
                updated_ms=start,
            )
        )

    customers = {c.account: c for c in sc.customers}
    for i, so in enumerate(sc.orders):
        if so.in_wms is None:
            continue
        where = f"orders[{i}] ({so.document_no})"
        lines: list[tuple[int, dict[str, Any], int]] = []  # (line index, item, despatched units)
        state = so.in_wms
        for j, line in enumerate(so.lines):
            if line.line_type != "Standard" or line.sku not in pids:
                if j in state.despatched_quantities:
                    raise bad(f"{where}.in_wms.despatched_quantities[{j}]: line {j} is not a WMS stock line")
                continue
            n = units[line.sku]
            qty = _whole(line.quantity * n, f"{where}.lines[{j}].quantity")
            if state.status == "DESPATCHED" and not state.despatched_quantities:
                done = qty
            else:
                done = _whole(
                    state.despatched_quantities.get(j, Decimal(0)) * n,
                    f"{where}.in_wms.despatched_quantities[{j}]",
                )
            if not 0 <= done <= qty:
                raise bad(f"{where}.in_wms.despatched_quantities[{j}]: {done} is outside 0..{qty}")
            item = {
                "product_id": pids[line.sku],
                "warehouse_id": warehouse(line.warehouse or "", f"{where}.lines[{j}].warehouse"),
                "quantity": qty,
                "unit_price": line.unit_price
                if n == 1
                else (line.unit_price / n).quantize(Decimal("0.0001")),
            }
            lines.append((j, item, done))
        if not lines:
            raise bad(f"{where}.in_wms: the order has no WMS stock lines")
        for j in state.despatched_quantities:
            if not 0 <= j < len(so.lines):
                raise bad(f"{where}.in_wms.despatched_quantities: no line {j}")
        cust = customers.get(so.customer)
        address = {
            "CompanyName": cust.name if cust else so.customer,
            "Address1": cust.address_1 if cust else "",
            "Town": cust.town if cust else "",
            "PostCode": cust.postcode if cust else "",
            "Country": cust.country if cust else "GB",
            "Email": cust.email if cust else None,
        }
        head = {
            "order_number": so.document_no,
            "ext_ref": so.document_no,
            "warehouse_id": lines[0][1]["warehouse_id"],
            "courier_service": so.courier_service,
            "channel": None,
            "currency": sc.currency,
            "address": jsonutil.dumps(address),
            "order_date_ms": db.to_ms(so.document_date),
        }
        _load_order(tx, head, lines, STATUS_ID[state.status])

    for i, r in enumerate(sc.receipts):
        pid = product(r.sku, f"receipts[{i}].sku")
        wid = warehouse(r.warehouse, f"receipts[{i}].warehouse")
        qty = _whole(r.quantity * units[r.sku], f"receipts[{i}].quantity")
        head = {
            "warehouse_id": wid,
            "po_reference": r.reference,
            "supplier": None,
            "comments": None,
            "estimated_ms": None if r.booked_in_wms else db.to_ms(r.expected),
        }
        aid = tx.create_asn(
            head, [{"product_id": pid, "expected": qty, "source_line_id": None}], status="AwaitingDelivery"
        )
        if r.booked_in_wms:
            # Opening stock is the position before receipts (docs/scenarios.md): raise the level.
            tx.now = min(start, db.to_ms(r.expected))
            row = tx.stock_row(pid, wid)
            conn.execute(
                db.stock.update()
                .where(db.stock.c.product_id == pid, db.stock.c.warehouse_id == wid)
                .values(level=row["level"] + qty, updated_ms=tx.now)
            )
            conn.execute(
                insert(db.stock_flow).values(
                    product_id=pid,
                    warehouse_id=wid,
                    at_ms=tx.now,
                    flow="ASNStockIN",
                    reason=f"ASN {aid} booked in before the scenario start",
                    quantity=qty,
                    level_change=qty,
                    quarantine_change=0,
                    asn_id=aid,
                )
            )
            conn.execute(
                db.asn_items.update().where(db.asn_items.c.asn_id == aid).values(received=qty, booked=qty)
            )
            conn.execute(
                db.asns.update()
                .where(db.asns.c.id == aid)
                .values(status="BookedIn", created_ms=tx.now, last_updated_ms=tx.now)
            )
            tx.now = start
    set_meta(conn, "scenario", {"name": sc.name, "starts_at_ms": start})


def _load_order(
    tx: Tx, head: dict[str, Any], lines: list[tuple[int, dict[str, Any], int]], status: int
) -> None:
    """Place one Sage order in the WMS as it stands: despatched part, then whatever is still open."""
    despatched = sum(done for _, _, done in lines)
    remaining = [(item, item["quantity"] - done) for _, item, done in lines if item["quantity"] > done]
    if despatched:
        oid = tx.insert_order(head, status=DESPATCHED)
        item_ids = {tx.insert_item(oid, {**item, "quantity": done}): done for _, item, done in lines if done}
        tx.despatch(tx.order(oid), quantities=item_ids)
        if not remaining:
            return
        rest = ONBACKORDER if status == DESPATCHED else status
        part = tx.add_part(tx.order(oid), rest, None)
        for item, qty in remaining:
            tx.insert_item(part, {**item, "quantity": qty})
        _place_open(tx, part, rest)
        return
    oid = tx.insert_order(head, status=status)
    for _, item, _ in lines:
        tx.insert_item(oid, item)
    _place_open(tx, oid, status)


def _place_open(tx: Tx, oid: int, status: int) -> None:
    if status == CANCELLED:
        tx.enter(oid, CANCELLED, None)
        return
    if status == ONBACKORDER:
        for it in tx.items(oid):
            tx.conn.execute(
                db.order_items.update()
                .where(db.order_items.c.id == it["id"])
                .values(on_back_order=it["quantity"])
            )
    else:
        tx.allocate_order(oid)
    tx.enter(oid, status, tx.schedule_for(oid, status))
