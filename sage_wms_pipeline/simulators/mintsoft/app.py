"""Mintsoft-compatible WMS simulator: the HTTP API over the living warehouse.

Handlers are `async def` on purpose: they run one at a time on the event loop, so each request sees
and changes the SQLite state without interleaving, and replays of the clock stay deterministic.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import and_, func, or_, select

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.simulators.common import ExactJSONResponse
from sage_wms_pipeline.simulators.mintsoft import db
from sage_wms_pipeline.simulators.mintsoft.schemas import (
    AsnIn,
    AuthIn,
    ClockIn,
    FaultsIn,
    OnHandIn,
    OrderIn,
    QuantityLine,
    ReturnItemIn,
    StockMovementIn,
    describe,
)
from sage_wms_pipeline.simulators.mintsoft.sim import Simulator, demo_scenario
from sage_wms_pipeline.simulators.mintsoft.warehouse import (
    ASN_OPEN,
    CANCELLED,
    RETURN_REASONS,
    STATUS_NAME,
    STATUSES,
    SimError,
    Tx,
    bad,
    chance,
    conflict,
    get_meta,
    seeded,
)

M = TypeVar("M", bound=BaseModel)

MAX_LIMIT = 100
COURIERS = {1: "Royal Mail 24", 2: "Royal Mail 48", 3: "DPD Next Day", 4: "DHL Parcel UK", 5: "Evri 48"}
AUTO_COURIER = "Royal Mail 48"

# Mintsoft StockMovement action codes the simulator accepts: (flow, level change, quarantine change).
MOVEMENTS: dict[int, tuple[str, int, int]] = {
    0: ("StockIn", 1, 0),
    1: ("StockOut", -1, 0),
    7: ("Quarantine", -1, 1),
    8: ("UnQuarantine", 1, -1),
    9: ("ASNStockIN", 1, 0),
    16: ("Scrap", -1, 0),
    18: ("Scrap_Return", 0, 0),
    19: ("Scrap_OffHand", 0, -1),
}
ACTION_NAMES = {
    "StockIn": 0,
    "StockOut": 1,
    "Allocate": 2,
    "Unallocate": 3,
    "Despatch": 4,
    "BackOrder": 5,
    "UnBackOrder": 6,
    "Quarantine": 7,
    "UnQuarantine": 8,
    "ASNStockIN": 9,
    "OnOrder": 10,
    "UnOnOrder": 11,
    "InTransition": 12,
    "UnInTransition": 13,
    "TransitionComplete": 14,
    "Transfer": 15,
    "Scrap": 16,
    "TransferLocation": 17,
    "Scrap_Return": 18,
    "Scrap_OffHand": 19,
}


def out(content: Any) -> ExactJSONResponse:
    """Respond directly: FastAPI's own encoder would turn Decimal into float."""
    return ExactJSONResponse(content)


def ts(ms: int | None) -> datetime | None:
    return db.from_ms(ms)


def parse_ts(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return db.to_ms(datetime.fromisoformat(value.strip().replace(" ", "T")))
    except ValueError:
        raise bad(f"{name}: {value!r} is not an ISO 8601 timestamp") from None


def whole(value: Decimal, where: str, positive: bool = True) -> int:
    if not value.is_finite() or value != value.to_integral_value():
        raise bad(f"{where}: {value} is not a whole number of units")
    if positive and value <= 0:
        raise bad(f"{where}: must be greater than zero, got {value}")
    return int(value)


def paging(page_no: int, limit: int) -> tuple[int, int]:
    if page_no < 1:
        raise bad(f"PageNo: must be 1 or more, got {page_no}")
    if not 1 <= limit <= MAX_LIMIT:
        raise bad(f"Limit: must be between 1 and {MAX_LIMIT}, got {limit}")
    return (page_no - 1) * limit, limit


async def body_of(request: Request, model: type[M], what: str = "") -> M:
    try:
        data = jsonutil.loads(await request.body() or b"null")
    except ValueError as exc:
        raise bad(f"body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad(describe(exc, what)) from None


async def list_body_of(request: Request, model: type[M]) -> list[M]:
    """Bodies that Mintsoft takes as a list; a single object is accepted too."""
    try:
        data = jsonutil.loads(await request.body() or b"null")
    except ValueError as exc:
        raise bad(f"body is not valid JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    out = []
    for i, item in enumerate(items):
        try:
            out.append(model.model_validate(item))
        except ValidationError as exc:
            raise bad(describe(exc, f"[{i}]")) from None
    if not out:
        raise bad("body: at least one line is required")
    return out


def resolve_product(tx: Tx, sku: str | None, product_id: int | None, where: str) -> int:
    if product_id is not None:
        if not tx.product_exists(product_id):
            raise bad(f"{where}.ProductId: unknown product {product_id}")
        return product_id
    if not sku:
        raise bad(f"{where}.SKU: SKU or ProductId is required")
    pid = tx.product_by_sku(sku)
    if pid is None:
        raise bad(f"{where}.SKU: unknown SKU {sku!r}")
    return pid


# ---- JSON shapes ---------------------------------------------------------------------------------


def item_json(tx: Tx, it: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": it["id"],
        "ProductId": it["product_id"],
        "SKU": tx.sku(it["product_id"]),
        "Quantity": it["quantity"],
        "UnitPrice": it["unit_price"],
        "UnitPriceVat": it["unit_price_vat"],
        "Discount": it["discount"],
        "WarehouseId": it["warehouse_id"],
        "Allocated": it["allocated"],
        "OnBackOrder": it["on_back_order"],
        "QuantityDespatched": it["despatched"],
    }


def shipments_json(tx: Tx, oid: int) -> list[dict[str, Any]]:
    rows = tx.conn.execute(
        select(db.shipments).where(db.shipments.c.order_id == oid).order_by(db.shipments.c.number)
    ).mappings()
    return [
        {
            "ID": r["id"],
            "Number": r["number"],
            "ShipmentDate": ts(r["shipment_ms"]),
            "TrackingNumber": r["tracking_number"],
            "TrackingURL": r["tracking_url"],
            "LabelURL": f"https://labels.sandbox.invalid/{r['tracking_number']}.pdf",
            "Manifested": True,
            "Items": jsonutil.loads(r["items"]),
        }
        for r in rows
    ]


def order_json(tx: Tx, o: dict[str, Any], with_items: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": o["id"],
        "OrderNumber": o["order_number"],
        "ExternalOrderReference": o["ext_ref"],
        "OrderStatusId": o["status_id"],
        "OrderStatus": STATUS_NAME[o["status_id"]],
        "WarehouseId": o["warehouse_id"],
        "ClientId": 1,
        "Channel": o["channel"],
        "Currency": o["currency"],
        "CourierServiceName": o["courier_service"],
        **jsonutil.loads(o["address"]),
        "OrderDate": ts(o["order_date_ms"]),
        "LastUpdated": ts(o["last_updated_ms"]),
        "DespatchDate": ts(o["despatch_ms"]),
        "TrackingNumber": o["tracking_number"],
        "TrackingURL": o["tracking_url"],
        "NumberOfParcels": o["number_of_parcels"],
        "Part": o["part"],
        "NumberOfParts": o["number_of_parts"],
        "OrderValue": o["order_value"],
    }
    if with_items:
        out["OrderItems"] = [item_json(tx, it) for it in tx.items(o["id"])]
        out["Shipments"] = shipments_json(tx, o["id"])
    return out


def asn_json(tx: Tx, a: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": a["id"],
        "WarehouseId": a["warehouse_id"],
        "POReference": a["po_reference"],
        "Supplier": a["supplier"],
        "EstimatedDelivery": ts(a["estimated_ms"]),
        "Comments": a["comments"],
        "Status": a["status"],
        "CreatedDate": ts(a["created_ms"]),
        "LastUpdated": ts(a["last_updated_ms"]),
        "Items": [
            {
                "ID": it["id"],
                "ProductId": it["product_id"],
                "SKU": tx.sku(it["product_id"]),
                "QuantityExpected": it["expected"],
                "QuantityReceieved": it["received"],
                "QuantityBooked": it["booked"],
                "Complete": it["booked"] >= it["expected"],
                "SourceLineId": it["source_line_id"],
            }
            for it in tx.asn_items(a["id"])
        ],
    }


def return_json(tx: Tx, r: dict[str, Any]) -> dict[str, Any]:
    items = tx.conn.execute(
        select(db.return_items).where(db.return_items.c.return_id == r["id"]).order_by(db.return_items.c.id)
    ).mappings()
    order_number = tx.conn.execute(
        select(db.orders.c.order_number).where(db.orders.c.id == r["order_id"])
    ).scalar()
    return {
        "ID": r["id"],
        "OrderId": r["order_id"],
        "OrderNumber": order_number,
        "WarehouseId": r["warehouse_id"],
        "Reference": r["reference"],
        "Confirmed": bool(r["confirmed"]),
        "Refunded": False,
        "Exchanged": False,
        "CreatedDate": ts(r["created_ms"]),
        "ConfirmedDate": ts(r["confirmed_ms"]),
        "LastUpdated": ts(r["last_updated_ms"]),
        "Items": [
            {
                "ID": it["id"],
                "ProductId": it["product_id"],
                "SKU": tx.sku(it["product_id"]),
                "WarehouseId": it["warehouse_id"],
                "Quantity": it["quantity"],
                "ReturnReasonId": it["reason_id"],
                "StockAction": it["action"],
                "ReturnedToStock": bool(r["confirmed"]) and it["action"] == "Restock",
                "Comments": it["comments"],
            }
            for it in items
        ],
    }


def flow_json(tx: Tx, f: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": f["id"],
        "ProductId": f["product_id"],
        "SKU": tx.sku(f["product_id"]),
        "WarehouseId": f["warehouse_id"],
        "Date": ts(f["at_ms"]),
        "Flow": f["flow"],
        "Reason": f["reason"],
        "Quantity": f["quantity"],
        "LevelChange": f["level_change"],
        "QuarantineChange": f["quarantine_change"],
        "OrderId": f["order_id"],
        "ASNId": f["asn_id"],
        "ReturnId": f["return_id"],
        "Comment": f["comment"],
    }


# ---- delivery faults on list responses -----------------------------------------------------------


def junk_order(rng: random.Random, rec: dict[str, Any]) -> dict[str, Any]:
    bad_rec = copy.deepcopy(rec)
    kind = rng.randrange(3) if bad_rec.get("OrderItems") else 2
    if kind == 0:
        bad_rec["OrderItems"][0]["Quantity"] = -abs(bad_rec["OrderItems"][0]["Quantity"]) or -1
    elif kind == 1:
        bad_rec["OrderItems"][0].update(SKU=f"UNKNOWN-SKU-{rng.randrange(10**6)}", ProductId=0)
    else:
        bad_rec.update(
            ID=10**9 + rng.randrange(10**6),
            OrderNumber=f"UNKNOWN-{rng.randrange(10**6)}",
            ExternalOrderReference=None,
        )
    return bad_rec


def junk_flow(rng: random.Random, rec: dict[str, Any]) -> dict[str, Any]:
    bad_rec = copy.deepcopy(rec)
    kind = rng.randrange(3)
    if kind == 0:
        bad_rec.update(Quantity=-abs(bad_rec["Quantity"]) or -1)
    elif kind == 1:
        bad_rec.update(SKU=f"UNKNOWN-SKU-{rng.randrange(10**6)}", ProductId=0)
    else:
        bad_rec.update(OrderId=10**9 + rng.randrange(10**6))
    return bad_rec


def with_faults(
    request: Request,
    tx: Tx,
    records: list[dict[str, Any]],
    kind: str,
    junk: Callable[[random.Random, dict[str, Any]], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Deliver a page the way a flaky integration does: repeats, swaps and junk, from the fault seed."""
    f = tx.faults
    if not records:
        return records
    rng = seeded(f["seed"], "page", kind, getattr(request.state, "request_no", 0))
    out: list[dict[str, Any]] = []
    for rec in records:
        out.append(rec)
        if chance(rng, Decimal(f["duplicate_rate"])):
            out.append(copy.deepcopy(rec))
        if chance(rng, Decimal(f["malformed_rate"])):
            out.append(junk(rng, rec))
    for i in range(len(out) - 1):
        if chance(rng, Decimal(f["out_of_order_rate"])):
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


# ---- the app -------------------------------------------------------------------------------------


def create_app(data_dir: Path) -> FastAPI:
    sim = Simulator(data_dir)
    app = FastAPI(title="Mintsoft simulator", default_response_class=ExactJSONResponse)

    @app.exception_handler(SimError)
    async def _sim_error(_: Request, exc: SimError) -> ExactJSONResponse:
        headers = exc.extra.pop("headers", None)
        return ExactJSONResponse(
            {"Success": False, "Message": exc.message, **exc.extra}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _query_error(_: Request, exc: RequestValidationError) -> ExactJSONResponse:
        parts = [f"{err['loc'][-1]}: {err['msg']}" for err in exc.errors()]
        return ExactJSONResponse({"Success": False, "Message": "; ".join(parts)}, status_code=400)

    async def gate(request: Request) -> None:
        """Everything a real call meets before its handler: throttling, outages, the key, the clock."""
        n = sim.next_request_no()
        request.state.request_no = n
        f = sim.faults()
        rng = seeded(f["seed"], "gate", n)
        if chance(rng, Decimal(f["rate_429"])):
            retry = str(f["retry_after_seconds"])
            raise SimError(429, "Too many requests", headers={"Retry-After": retry})
        if chance(rng, Decimal(f["rate_5xx"])):
            raise SimError(rng.choice([500, 502, 503]), "Simulated server error")
        problem = sim.check_key(request.headers.get("ms-apikey"))
        if problem:
            raise SimError(401, problem)
        sim.advance()

    api = APIRouter(prefix="/api", dependencies=[Depends(gate)])

    # ---- auth -------------------------------------------------------------------------------------

    @app.post("/api/Auth")
    async def auth(request: Request) -> Any:
        body = await body_of(request, AuthIn)
        sim.advance()
        key = sim.issue_key(body.Username, body.Password)
        if key is None:
            raise SimError(401, "Invalid username or password")
        return out(key)

    # ---- orders -----------------------------------------------------------------------------------

    @api.put("/Order")
    async def create_order(request: Request) -> Any:
        data = await body_of(request, OrderIn)
        with sim.tx() as tx:
            o = db.orders.c
            ref_match = o.order_number == data.OrderNumber
            if data.ExternalOrderReference:
                ref_match = or_(ref_match, o.ext_ref == data.ExternalOrderReference)
            existing = (
                tx.conn.execute(select(db.orders).where(ref_match).order_by(o.id).limit(1)).mappings().first()
            )
            if existing is not None:
                field = (
                    "OrderNumber"
                    if existing["order_number"] == data.OrderNumber
                    else "ExternalOrderReference"
                )
                value = data.OrderNumber if field == "OrderNumber" else data.ExternalOrderReference
                raise conflict(
                    f"{field}: an order with {field} {value!r} already exists (OrderId {existing['id']}); "
                    "nothing created",
                    OrderId=existing["id"],
                    OrderNumber=existing["order_number"],
                    OrderStatusId=existing["status_id"],
                    OrderStatus=STATUS_NAME[existing["status_id"]],
                )
            wid = data.WarehouseId
            if wid is None and data.Warehouse:
                wid = tx.conn.execute(
                    select(db.warehouses.c.id).where(db.warehouses.c.name == data.Warehouse)
                ).scalar()
                if wid is None:
                    raise bad(f"Warehouse: unknown warehouse {data.Warehouse!r}")
            if wid is None:
                raise bad("WarehouseId: required (or Warehouse by name)")
            if not tx.warehouse_exists(wid):
                raise bad(f"WarehouseId: unknown warehouse {wid}")
            if data.CourierServiceId is not None:
                if data.CourierServiceId not in COURIERS:
                    raise bad(f"CourierServiceId: unknown courier service {data.CourierServiceId}")
                courier = COURIERS[data.CourierServiceId]
            elif data.CourierService:
                courier = AUTO_COURIER if data.CourierService.upper() == "AUTO" else data.CourierService
            else:
                raise bad('CourierService: required (a courier service name, CourierServiceId, or "AUTO")')
            field = "OrderItems" if data.OrderItems else "Items"
            items = []
            for i, line in enumerate(data.lines):
                where = f"{field}[{i}]"
                pid = resolve_product(tx, line.SKU, line.ProductId, where)
                line_wid = line.WarehouseId if line.WarehouseId is not None else wid
                if not tx.warehouse_exists(line_wid):
                    raise bad(f"{where}.WarehouseId: unknown warehouse {line_wid}")
                items.append(
                    {
                        "product_id": pid,
                        "warehouse_id": line_wid,
                        "quantity": whole(line.Quantity, f"{where}.Quantity"),
                        "unit_price": line.UnitPrice,
                        "unit_price_vat": line.UnitPriceVat,
                        "discount": line.Discount,
                    }
                )
            head = {
                "order_number": data.OrderNumber,
                "ext_ref": data.ExternalOrderReference,
                "warehouse_id": wid,
                "courier_service": courier,
                "channel": data.Channel,
                "currency": data.Currency,
                "address": jsonutil.dumps(data.address()),
                "order_value": data.OrderValue,
            }
            oid = tx.create_order(head, items)
            order = tx.order(oid)
            return out(
                {
                    "OrderId": oid,
                    "OrderNumber": data.OrderNumber,
                    "Success": True,
                    "OrderStatusId": order["status_id"],
                    "OrderStatus": STATUS_NAME[order["status_id"]],
                    "Message": "Order created",
                    "OrderItems": [item_json(tx, it) for it in tx.items(oid)],
                }
            )

    @api.get("/Order/Statuses")
    async def statuses() -> Any:
        return out([{"ID": sid, "Name": name, "ExternalName": ext} for sid, name, ext in STATUSES])

    @api.get("/Order/Search")
    async def search_orders(OrderNumber: str | None = None, ExternalOrderReference: str | None = None) -> Any:
        if not OrderNumber and not ExternalOrderReference:
            raise bad("OrderNumber: give OrderNumber or ExternalOrderReference")
        with sim.tx() as tx:
            o = db.orders.c
            cond = o.order_number == OrderNumber if OrderNumber else o.ext_ref == ExternalOrderReference
            rows = tx.conn.execute(select(db.orders).where(cond).order_by(o.id)).mappings().all()
            return out([order_json(tx, dict(r)) for r in rows])

    @api.get("/Order/List")
    async def list_orders(
        request: Request,
        SinceLastUpdated: str | None = None,
        SinceDespatchDate: str | None = None,
        OrderStatusId: int | None = None,
        WarehouseId: int | None = None,
        IncludeOrderItems: bool = True,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        offset, limit = paging(PageNo, Limit)
        since = parse_ts("SinceLastUpdated", SinceLastUpdated)
        since_despatch = parse_ts("SinceDespatchDate", SinceDespatchDate)
        with sim.tx() as tx:
            o = db.orders.c
            conds = [or_(o.hidden_until_ms.is_(None), o.hidden_until_ms <= tx.now)]
            if since is not None:
                conds.append(o.last_updated_ms >= since)
            if since_despatch is not None:
                conds.append(o.despatch_ms >= since_despatch)
            if OrderStatusId is not None:
                conds.append(o.status_id == OrderStatusId)
            if WarehouseId is not None:
                conds.append(o.warehouse_id == WarehouseId)
            rows = (
                tx.conn.execute(
                    select(db.orders)
                    .where(and_(*conds))
                    .order_by(o.last_updated_ms, o.id)
                    .offset(offset)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            records = [order_json(tx, dict(r), IncludeOrderItems) for r in rows]
            return out(with_faults(request, tx, records, "orders", junk_order))

    @api.get("/Order/{order_id:int}")
    async def get_order(order_id: int) -> Any:
        with sim.tx() as tx:
            return out(order_json(tx, tx.order(order_id)))

    @api.get("/Order/{order_id:int}/Items")
    async def get_order_items(order_id: int) -> Any:
        with sim.tx() as tx:
            tx.order(order_id)
            return out([item_json(tx, it) for it in tx.items(order_id)])

    @api.get("/Order/{order_id:int}/Shipments")
    async def get_order_shipments(order_id: int) -> Any:
        with sim.tx() as tx:
            tx.order(order_id)
            return out(shipments_json(tx, order_id))

    def action_result(oid: int, message: str) -> dict[str, Any]:
        return {"ID": oid, "Success": True, "Message": message, "WarningMessage": None}

    @api.api_route("/Order/{order_id:int}/Cancel", methods=["GET", "POST"])
    async def cancel_order(order_id: int) -> Any:
        with sim.tx() as tx:
            if tx.order(order_id)["status_id"] == CANCELLED:  # a repeat: nothing to do, say so
                return out(
                    {**action_result(order_id, "Order cancelled"), "WarningMessage": "already cancelled"}
                )
            tx.cancel(order_id)
        return out(action_result(order_id, "Order cancelled"))

    @api.api_route("/Order/{order_id:int}/MarkPackAndHold", methods=["GET", "POST"])
    async def pack_and_hold(order_id: int) -> Any:
        with sim.tx() as tx:
            tx.pack_and_hold(order_id, hold=True)
        return out(action_result(order_id, "Order marked pack and hold"))

    @api.api_route("/Order/{order_id:int}/MarkReleasePackAndHold", methods=["GET", "POST"])
    async def release_pack_and_hold(order_id: int) -> Any:
        with sim.tx() as tx:
            tx.pack_and_hold(order_id, hold=False)
        return out(action_result(order_id, "Order released from pack and hold"))

    # ---- stock ------------------------------------------------------------------------------------

    def stock_rows(
        tx: Tx,
        warehouse: str | None,
        sku: str | None,
        since: int | None,
        breakdown: bool,
        offset: int,
        limit: int,
    ) -> list[dict[str, Any]]:
        s, p = db.stock.c, db.products.c
        ai, a = db.asn_items.c, db.asns.c
        on_order: dict[tuple[int, int], int] = {}
        inbound = tx.conn.execute(
            select(ai.product_id, a.warehouse_id, func.sum(ai.expected - ai.booked))
            .select_from(db.asn_items.join(db.asns, a.id == ai.asn_id))
            .where(a.status.in_(ASN_OPEN))
            .group_by(ai.product_id, a.warehouse_id)
        ).all()
        for pid, wid, qty in inbound:
            on_order[(pid, wid)] = max(0, qty)
        conds = []
        if sku:
            conds.append(p.sku == sku)
        if since is not None:
            conds.append(s.updated_ms >= since)
        wid_filter: int | None = None
        if warehouse not in (None, ""):
            try:
                wid_filter = int(warehouse)
            except ValueError:
                raise bad(f"WarehouseId: {warehouse!r} is not a warehouse id") from None
            if wid_filter != 0:
                if not tx.warehouse_exists(wid_filter):
                    raise bad(f"WarehouseId: unknown warehouse {wid_filter}")
                conds.append(s.warehouse_id == wid_filter)
        cols = [s.product_id, p.sku]
        if wid_filter == 0:  # all warehouses summed, as Mintsoft's WarehouseId=0
            query = (
                select(
                    *cols,
                    func.sum(s.level),
                    func.sum(s.allocated),
                    func.sum(s.quarantine),
                    func.max(s.updated_ms),
                )
                .select_from(db.stock.join(db.products, p.id == s.product_id))
                .where(*conds)
                .group_by(s.product_id, p.sku)
                .order_by(s.product_id)
            )
        else:
            query = (
                select(*cols, s.level, s.allocated, s.quarantine, s.updated_ms, s.warehouse_id)
                .select_from(db.stock.join(db.products, p.id == s.product_id))
                .where(*conds)
                .order_by(s.product_id, s.warehouse_id)
            )
        out = []
        for row in tx.conn.execute(query.offset(offset).limit(limit)).all():
            pid, code, level, allocated, quarantine, updated = row[:6]
            wid = 0 if wid_filter == 0 else row[6]
            inbound_qty = (
                sum(q for (ip, _), q in on_order.items() if ip == pid)
                if wid == 0
                else on_order.get((pid, wid), 0)
            )
            rec: dict[str, Any] = {
                "ProductId": pid,
                "WarehouseId": wid,
                "ClientId": 1,
                "SKU": code,
                "Level": level - allocated,
                "TotalStockLevel": level,
                "Allocated": allocated,
                "Available": level - allocated,
                "InQuarantine": quarantine,
                "OnOrder": inbound_qty,
                "PreOrderable": False,
                "Bundle": False,
                "LowStockLevel": 0,
                "LastUpdated": ts(updated),
            }
            if breakdown:
                rec["Breakdown"] = [
                    {
                        "Quantity": level,
                        "BatchNo": None,
                        "SerialNo": None,
                        "BestBefore": None,
                        "Type": "Sellable",
                    },
                    {
                        "Quantity": quarantine,
                        "BatchNo": None,
                        "SerialNo": None,
                        "BestBefore": None,
                        "Type": "Quarantine",
                    },
                ]
            out.append(rec)
        return out

    @api.get("/Product/StockLevels")
    async def stock_levels(
        WarehouseId: str | None = None,
        SKU: str | None = None,
        Breakdown: bool = True,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        offset, limit = paging(PageNo, Limit)
        with sim.tx() as tx:
            return out(stock_rows(tx, WarehouseId, SKU, None, Breakdown, offset, limit))

    @api.get("/Product/StockLevels/UpdatedSince")
    async def stock_levels_since(
        FromDate: str,
        WarehouseId: str | None = None,
        Breakdown: bool = True,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        offset, limit = paging(PageNo, Limit)
        since = parse_ts("FromDate", FromDate)
        with sim.tx() as tx:
            return out(stock_rows(tx, WarehouseId, None, since, Breakdown, offset, limit))

    @api.get("/Product/List")
    async def product_list(PageNo: int = 1, Limit: int = MAX_LIMIT) -> Any:
        offset, limit = paging(PageNo, Limit)
        with sim.tx() as tx:
            rows = tx.conn.execute(select(db.products).order_by(db.products.c.id).offset(offset).limit(limit))
            return out([{"ID": r.id, "SKU": r.sku, "Name": r.name, "Barcode": r.barcode} for r in rows])

    @api.get("/Warehouse")
    async def warehouse_list() -> Any:
        with sim.tx() as tx:
            rows = tx.conn.execute(select(db.warehouses).order_by(db.warehouses.c.id))
            return out([{"ID": r.id, "Name": r.name} for r in rows])

    @api.post("/Warehouse/StockMovement")
    async def stock_movement(request: Request) -> Any:
        lines = await list_body_of(request, StockMovementIn)
        single = len(lines) == 1
        ids = []
        with sim.tx() as tx:
            for i, m in enumerate(lines):
                where = "" if single else f"[{i}]"
                if isinstance(m.Action, int):
                    code: int | None = m.Action
                elif m.Action.strip().isdigit():
                    code = int(m.Action)
                else:
                    code = ACTION_NAMES.get(m.Action)
                if code not in MOVEMENTS:
                    raise bad(
                        f"{where}Action: {m.Action!r} is not a stock movement the simulator accepts "
                        f"(codes {sorted(MOVEMENTS)})"
                    )
                pid = resolve_product(tx, m.SKU, m.ProductId, where or "body")
                if not tx.warehouse_exists(m.WarehouseId):
                    raise bad(f"{where}WarehouseId: unknown warehouse {m.WarehouseId}")
                qty = whole(m.Quantity, f"{where}Quantity")
                flow, lvl, quar = MOVEMENTS[code]
                try:
                    ids.append(
                        tx.move(
                            pid,
                            m.WarehouseId,
                            flow,
                            m.Comment or flow,
                            quantity=qty,
                            level=lvl * qty,
                            quarantine=quar * qty,
                            comment=m.Comment,
                        )
                    )
                except SimError as exc:
                    raise bad(f"{where}Quantity: {exc.message}") from None
        return out(
            {
                "ID": ids[-1],
                "Success": True,
                "Message": f"{len(ids)} stock movement(s) recorded",
                "WarningMessage": None,
            }
        )

    @api.post("/Product/BulkOnHandStockUpdate")
    async def bulk_on_hand(request: Request) -> Any:
        rows = await list_body_of(request, OnHandIn)
        changed = 0
        with sim.tx() as tx:
            for i, r in enumerate(rows):
                where = f"[{i}]"
                pid = resolve_product(tx, r.SKU, r.ProductId, where)
                if not tx.warehouse_exists(r.WarehouseId):
                    raise bad(f"{where}.WarehouseId: unknown warehouse {r.WarehouseId}")
                target = whole(r.Quantity, f"{where}.Quantity", positive=False)
                if target < 0:
                    raise bad(f"{where}.Quantity: must not be negative, got {target}")
                delta = target - tx.stock_row(pid, r.WarehouseId)["level"]
                if delta:
                    try:
                        tx.move(
                            pid,
                            r.WarehouseId,
                            "CountCorrection",
                            "On-hand level set by stock count",
                            quantity=abs(delta),
                            level=delta,
                        )
                    except SimError as exc:
                        raise bad(f"{where}.Quantity: {exc.message}") from None
                    changed += 1
        return out({"Success": True, "Message": f"{changed} stock level(s) changed", "WarningMessage": None})

    def flows(
        request: Request,
        product_id: int | None,
        WarehouseId: int | None,
        SinceId: int | None,
        Since: str | None,
        PageNo: int,
        Limit: int,
    ) -> Any:
        offset, limit = paging(PageNo, Limit)
        since = parse_ts("Since", Since)
        with sim.tx() as tx:
            f = db.stock_flow.c
            conds = []
            if product_id is not None:
                if not tx.product_exists(product_id):
                    raise SimError(404, f"Product {product_id} not found")
                conds.append(f.product_id == product_id)
            if WarehouseId is not None:
                conds.append(f.warehouse_id == WarehouseId)
            if SinceId is not None:
                conds.append(f.id > SinceId)
            if since is not None:
                conds.append(f.at_ms >= since)
            rows = (
                tx.conn.execute(
                    select(db.stock_flow).where(*conds).order_by(f.id).offset(offset).limit(limit)
                )
                .mappings()
                .all()
            )
            return with_faults(request, tx, [flow_json(tx, dict(r)) for r in rows], "flow", junk_flow)

    @api.get("/Product/StockFlow")
    async def all_stock_flow(
        request: Request,
        WarehouseId: int | None = None,
        SinceId: int | None = None,
        Since: str | None = None,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        return out(flows(request, None, WarehouseId, SinceId, Since, PageNo, Limit))

    @api.get("/Product/{product_id:int}/StockFlow")
    async def product_stock_flow(
        request: Request,
        product_id: int,
        WarehouseId: int | None = None,
        SinceId: int | None = None,
        Since: str | None = None,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        return out(flows(request, product_id, WarehouseId, SinceId, Since, PageNo, Limit))

    # ---- goods in ---------------------------------------------------------------------------------

    @api.put("/ASN")
    async def create_asn(request: Request) -> Any:
        data = await body_of(request, AsnIn)
        with sim.tx() as tx:
            if not tx.warehouse_exists(data.WarehouseId):
                raise bad(f"WarehouseId: unknown warehouse {data.WarehouseId}")
            items = []
            for i, it in enumerate(data.Items):
                where = f"Items[{i}]"
                items.append(
                    {
                        "product_id": resolve_product(tx, it.SKU, it.ProductId, where),
                        "expected": whole(it.Quantity, f"{where}.Quantity"),
                        "source_line_id": it.SourceLineId,
                    }
                )
            head = {
                "warehouse_id": data.WarehouseId,
                "po_reference": data.POReference,
                "supplier": data.Supplier,
                "comments": data.Comments,
                "estimated_ms": None if data.EstimatedDelivery is None else db.to_ms(data.EstimatedDelivery),
            }
            aid = tx.create_asn(head, items)
        return out({"ID": aid, "Success": True, "Message": "ASN created", "WarningMessage": None})

    @api.get("/ASN/List")
    async def list_asns(
        SinceLastUpdated: str | None = None,
        FromDate: str | None = None,
        ToDate: str | None = None,
        WarehouseId: int | None = None,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        offset, limit = paging(PageNo, Limit)
        since = parse_ts("SinceLastUpdated", SinceLastUpdated)
        start, end = parse_ts("FromDate", FromDate), parse_ts("ToDate", ToDate)
        with sim.tx() as tx:
            a = db.asns.c
            conds = []
            for bound in (since, start):
                if bound is not None:
                    conds.append(a.last_updated_ms >= bound)
            if end is not None:
                conds.append(a.last_updated_ms <= end)
            if WarehouseId is not None:
                conds.append(a.warehouse_id == WarehouseId)
            rows = (
                tx.conn.execute(
                    select(db.asns)
                    .where(*conds)
                    .order_by(a.last_updated_ms, a.id)
                    .offset(offset)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            return out([asn_json(tx, dict(r)) for r in rows])

    @api.get("/ASN/{asn_id:int}")
    async def get_asn(asn_id: int) -> Any:
        with sim.tx() as tx:
            return out(asn_json(tx, tx.asn(asn_id)))

    async def asn_lines(request: Request) -> list[tuple[QuantityLine, str]]:
        lines = await list_body_of(request, QuantityLine)
        return [(line, f"[{i}]") for i, line in enumerate(lines)]

    def resolved(tx: Tx, lines: list[tuple[QuantityLine, str]]) -> list[tuple[int, int, str]]:
        return [
            (
                resolve_product(tx, ln.SKU, ln.ProductId, w),
                whole(ln.Quantity, f"{w}.Quantity"),
                f"{w}.Quantity",
            )
            for ln, w in lines
        ]

    @api.api_route("/ASN/{asn_id:int}/Confirm", methods=["GET", "POST"])
    async def confirm_asn(asn_id: int) -> Any:
        with sim.tx() as tx:
            tx.confirm_asn(asn_id)
        return out(action_result(asn_id, "ASN confirmed"))

    @api.post("/ASN/{asn_id:int}/Items/Receive")
    async def receive_asn(request: Request, asn_id: int) -> Any:
        lines = await asn_lines(request)
        with sim.tx() as tx:
            tx.receive_asn(asn_id, resolved(tx, lines))
        return out(action_result(asn_id, "Items received"))

    @api.post("/ASN/{asn_id:int}/BookIn")
    async def book_in(asn_id: int) -> Any:
        with sim.tx() as tx:
            tx.book_in_asn(asn_id)
        return out(action_result(asn_id, "ASN booked in"))

    @api.post("/ASN/{asn_id:int}/BookInPartial")
    async def book_in_partial(request: Request, asn_id: int) -> Any:
        lines = await asn_lines(request)
        with sim.tx() as tx:
            tx.book_in_partial(asn_id, resolved(tx, lines))
        return out(action_result(asn_id, "ASN part booked in"))

    # ---- returns ----------------------------------------------------------------------------------

    @api.post("/Return/CreateReturn/{order_id:int}")
    async def create_return(order_id: int) -> Any:
        with sim.tx() as tx:
            rid = tx.create_return(order_id)
        return out({"ID": rid, "Success": True, "Message": "Return created", "WarningMessage": None})

    @api.post("/Return/{return_id:int}/AddItem")
    async def add_return_item(request: Request, return_id: int) -> Any:
        data = await body_of(request, ReturnItemIn)
        action = {"restock": "Restock", "quarantine": "Quarantine", "scrap": "Scrap"}.get(data.Action.lower())
        if action is None:
            raise bad(f"Action: {data.Action!r} is not Restock, Quarantine or Scrap")
        if data.ReturnReasonId not in dict(RETURN_REASONS):
            raise bad(f"ReturnReasonId: unknown return reason {data.ReturnReasonId}")
        with sim.tx() as tx:
            pid = resolve_product(tx, data.SKU, data.ProductId, "body")
            qty = whole(data.Quantity, "Quantity")
            item_id = tx.add_return_item(return_id, pid, qty, data.ReturnReasonId, action, data.Comments)
        return out({"ID": item_id, "Success": True, "Message": "Item added", "WarningMessage": None})

    @api.api_route("/Return/{return_id:int}/Confirm", methods=["GET", "POST"])
    async def confirm_return(return_id: int) -> Any:
        with sim.tx() as tx:
            tx.confirm_return(return_id)
        return out(action_result(return_id, "Return confirmed"))

    @api.get("/Return/Reasons")
    async def return_reasons() -> Any:
        return out([{"ID": rid, "Name": name} for rid, name in RETURN_REASONS])

    @api.get("/Return/SearchByDate")
    async def returns_by_date(
        FromDate: str | None = None,
        ToDate: str | None = None,
        PageNo: int = 1,
        Limit: int = MAX_LIMIT,
    ) -> Any:
        offset, limit = paging(PageNo, Limit)
        start, end = parse_ts("FromDate", FromDate), parse_ts("ToDate", ToDate)
        with sim.tx() as tx:
            r = db.returns.c
            conds = []
            if start is not None:
                conds.append(r.last_updated_ms >= start)
            if end is not None:
                conds.append(r.last_updated_ms <= end)
            rows = (
                tx.conn.execute(
                    select(db.returns)
                    .where(*conds)
                    .order_by(r.last_updated_ms, r.id)
                    .offset(offset)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            return out([return_json(tx, dict(x)) for x in rows])

    @api.get("/Return/{return_id:int}")
    async def get_return(return_id: int) -> Any:
        with sim.tx() as tx:
            row = tx.conn.execute(select(db.returns).where(db.returns.c.id == return_id)).mappings().first()
            if row is None:
                raise SimError(404, f"Return {return_id} not found")
            return out(return_json(tx, dict(row)))

    @api.get("/Return/{return_id:int}/Items")
    async def get_return_items(return_id: int) -> Any:
        with sim.tx() as tx:
            row = tx.conn.execute(select(db.returns).where(db.returns.c.id == return_id)).mappings().first()
            if row is None:
                raise SimError(404, f"Return {return_id} not found")
            return out(return_json(tx, dict(row))["Items"])

    app.include_router(api)

    # ---- admin ------------------------------------------------------------------------------------

    def speed_param(value: str | None) -> Decimal:
        if value in (None, ""):
            return Decimal(0)
        try:
            speed = Decimal(value)
        except ArithmeticError:
            raise bad(f"clock_speed: {value!r} is not a number") from None
        if not speed.is_finite() or speed < 0:
            raise bad(f"clock_speed: must be 0 or more, got {value}")
        return speed

    @app.get("/_sandbox/health")
    async def health() -> Any:
        return out({"status": "ok", "service": "mintsoft"})

    @app.post("/_sandbox/reset")
    async def reset(clock_speed: str | None = None) -> Any:
        sim.load(demo_scenario(), speed_param(clock_speed))
        return out({"status": "reset", "scenario": "demo", "clock": sim.clock()})

    @app.post("/_sandbox/scenario")
    async def load_scenario(request: Request, clock_speed: str | None = None) -> Any:
        speed = speed_param(clock_speed)
        try:
            data = jsonutil.loads(await request.body() or b"null")
        except ValueError as exc:
            raise bad(f"body is not valid JSON: {exc}") from None
        try:
            scenario = Scenario.model_validate(data)
        except ValidationError as exc:
            raise bad(describe(exc)) from None
        sim.load(scenario, speed)
        return out({"status": "loaded", "scenario": scenario.name, "clock": sim.clock()})

    @app.get("/_sandbox/clock")
    async def get_clock() -> Any:
        sim.advance()
        return out(sim.clock())

    @app.post("/_sandbox/clock")
    async def post_clock(request: Request) -> Any:
        data = await body_of(request, ClockIn)
        sim.set_clock(data.advance_seconds, None if data.set is None else db.to_ms(data.set), data.speed)
        return out(sim.clock())

    @app.get("/_sandbox/faults")
    async def get_faults() -> Any:
        return out(sim.faults())

    @app.post("/_sandbox/faults")
    async def post_faults(request: Request) -> Any:
        data = await body_of(request, FaultsIn)
        values = data.model_dump(exclude_none=True, exclude={"expire_keys"})
        result = sim.set_faults(values)
        if data.expire_keys:
            sim.expire_keys()
        return out(result)

    @app.get("/_sandbox/state")
    async def state() -> Any:
        sim.advance()
        with sim.tx() as tx:
            c = tx.conn
            o, a = db.orders.c, db.asns.c
            by_status = {
                STATUS_NAME[sid]: n
                for sid, n in c.execute(select(o.status_id, func.count()).group_by(o.status_id)).all()
            }
            asn_status = dict(c.execute(select(a.status, func.count()).group_by(a.status)).all())
            totals = c.execute(
                select(
                    func.coalesce(func.sum(db.stock.c.level), 0),
                    func.coalesce(func.sum(db.stock.c.allocated), 0),
                    func.coalesce(func.sum(db.stock.c.quarantine), 0),
                )
            ).one()
            return out(
                {
                    "clock": sim.clock(),
                    "scenario": (get_meta(c, "scenario") or {}).get("name"),
                    "orders": by_status,
                    "asns": asn_status,
                    "returns": c.execute(select(func.count()).select_from(db.returns)).scalar_one(),
                    "stock": {"level": totals[0], "allocated": totals[1], "quarantine": totals[2]},
                    "products": c.execute(select(func.count()).select_from(db.products)).scalar_one(),
                    "stock_flow_rows": c.execute(
                        select(func.count()).select_from(db.stock_flow)
                    ).scalar_one(),
                    "faults": tx.faults,
                }
            )

    return app
