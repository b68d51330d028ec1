"""The living warehouse: stock, orders, ASNs and returns, moved along by a simulated clock.

Every random choice is drawn from a generator seeded by (scenario seed, record id, purpose), so the
outcome does not depend on how often, or in what steps, the clock is advanced.
"""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import WarehouseBehaviour
from sage_wms_pipeline.simulators.mintsoft import db

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# (id, Name, ExternalName). Ids are tenant data in Mintsoft; DESPATCHED = 4 follows third-party code.
STATUSES: list[tuple[int, str, str]] = [
    (1, "NEW", "NEW"),
    (2, "PRINTED", "PRINTED"),
    (3, "AWAITINGPICKING", "AWAITINGPICKING"),
    (4, "DESPATCHED", "DESPATCHED"),
    (5, "CANCELLED", "CANCELLED"),
    (6, "HOLDING", "HOLDING"),
    (7, "ONBACKORDER", "ONBACKORDER"),
    (8, "PICKINGSTARTED", "PICKINGSTARTED"),
    (9, "PICKED", "PICKED"),
    (10, "PACKANDHOLD", "PACKANDHOLD"),
    (11, "INVOICED", "DESPATCHED"),
    (12, "INVOICEDFAILED", "DESPATCHED"),
    (13, "AWAITINGCONFIRMATION", "AWAITINGCONFIRMATION"),
    (14, "AWAITINGDOCUMENTATION", "AWAITINGDOCUMENTATION"),
    (15, "AWAITINGADDITIONALITEM", "AWAITINGADDITIONALITEM"),
    (16, "AWAITINGPAYMENT", "AWAITINGPAYMENT"),
    (17, "QUERYRAISED", "QUERYRAISED"),
    (18, "FAILED", "FAILED"),
]
STATUS_ID = {name: sid for sid, name, _ in STATUSES}
STATUS_NAME = {sid: name for sid, name, _ in STATUSES}
NEW, PRINTED, AWAITINGPICKING, DESPATCHED, CANCELLED = 1, 2, 3, 4, 5
HOLDING, ONBACKORDER, PICKINGSTARTED, PICKED, PACKANDHOLD = 6, 7, 8, 9, 10
CLOSED_STATUSES = {DESPATCHED, CANCELLED, 11, 12}

RETURN_REASONS: list[tuple[int, str]] = [
    (1, "Damaged"),
    (2, "Faulty"),
    (3, "Not as described"),
    (4, "Changed mind"),
    (5, "Wrong item sent"),
]
RETURN_ACTIONS = {"restock": "Restock", "quarantine": "Quarantine", "scrap": "Scrap"}

ASN_OPEN = ("New", "AwaitingDelivery", "AwaitingPutAway", "PartiallyBookedIn")

DEFAULT_FAULTS: dict[str, Any] = {
    "seed": 42,
    "duplicate_rate": Decimal(0),
    "out_of_order_rate": Decimal(0),
    "late_rate": Decimal(0),
    "late_seconds": 3600,
    "malformed_rate": Decimal(0),
    "rate_429": Decimal(0),
    "retry_after_seconds": 1,
    "rate_5xx": Decimal(0),
    "key_ttl_seconds": 86400,
}


class SimError(Exception):
    """A refusal the API reports to the caller; raised inside a transaction, so nothing is kept."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def bad(message: str) -> SimError:
    return SimError(400, message)


def not_found(message: str) -> SimError:
    return SimError(404, message)


def conflict(message: str, **extra: Any) -> SimError:
    return SimError(409, message, **extra)


def seeded(*parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def chance(rng: random.Random, rate: Decimal) -> bool:
    """True with probability `rate`, compared in integers so no float enters the decision."""
    return rng.randrange(1_000_000) < int(Decimal(rate) * 1_000_000)


def get_meta(conn: Connection, key: str) -> Any:
    value = conn.execute(select(db.meta.c.value).where(db.meta.c.key == key)).scalar()
    return None if value is None else jsonutil.loads(value)


def set_meta(conn: Connection, key: str, value: Any) -> None:
    text = jsonutil.dumps(value)
    if conn.execute(update(db.meta).where(db.meta.c.key == key).values(value=text)).rowcount == 0:
        conn.execute(insert(db.meta).values(key=key, value=text))


class Tx:
    """One transaction's view of the warehouse at one instant of simulated time."""

    def __init__(self, conn: Connection, now_ms: int) -> None:
        self.conn = conn
        self.now = now_ms
        behaviour = get_meta(conn, "behaviour")
        self.b = WarehouseBehaviour.model_validate(behaviour) if behaviour else WarehouseBehaviour()
        self.faults: dict[str, Any] = {**DEFAULT_FAULTS, **(get_meta(conn, "faults") or {})}
        self._skus: dict[int, str] = {}
        self.despatched = False  # set by a despatch, so the replay knows a return may now be due

    # ---- helpers -------------------------------------------------------------------------------

    def rng(self, *parts: object) -> random.Random:
        return seeded(self.b.seed, *parts)

    def dur(self, oid: int, purpose: str, hours: Decimal) -> int:
        """Stage duration with a per-order ±25 % jitter."""
        factor = Decimal(self.rng("order", oid, "dur", purpose).randrange(750, 1251)) / 1000
        return int(hours * HOUR_MS * factor)

    def sku(self, pid: int) -> str:
        if pid not in self._skus:
            self._skus[pid] = self.conn.execute(
                select(db.products.c.sku).where(db.products.c.id == pid)
            ).scalar_one()
        return self._skus[pid]

    def product_by_sku(self, sku: str) -> int | None:
        return self.conn.execute(select(db.products.c.id).where(db.products.c.sku == sku)).scalar()

    def product_exists(self, pid: int) -> bool:
        return self.conn.execute(select(db.products.c.id).where(db.products.c.id == pid)).scalar() is not None

    def warehouse_exists(self, wid: int) -> bool:
        return (
            self.conn.execute(select(db.warehouses.c.id).where(db.warehouses.c.id == wid)).scalar()
            is not None
        )

    def order(self, oid: int) -> dict[str, Any]:
        row = self.conn.execute(select(db.orders).where(db.orders.c.id == oid)).mappings().first()
        if row is None:
            raise not_found(f"Order {oid} not found")
        return dict(row)

    def items(self, oid: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            select(db.order_items).where(db.order_items.c.order_id == oid).order_by(db.order_items.c.id)
        ).mappings()
        return [dict(r) for r in rows]

    # ---- stock ---------------------------------------------------------------------------------

    def stock_row(self, pid: int, wid: int) -> dict[str, Any]:
        s = db.stock.c
        row = (
            self.conn.execute(select(db.stock).where(s.product_id == pid, s.warehouse_id == wid))
            .mappings()
            .first()
        )
        if row is not None:
            return dict(row)
        values = {
            "product_id": pid,
            "warehouse_id": wid,
            "level": 0,
            "allocated": 0,
            "quarantine": 0,
            "updated_ms": self.now,
        }
        self.conn.execute(insert(db.stock).values(**values))
        return values

    def move(
        self,
        pid: int,
        wid: int,
        flow: str,
        reason: str,
        *,
        quantity: int,
        level: int = 0,
        quarantine: int = 0,
        allocated: int = 0,
        order_id: int | None = None,
        asn_id: int | None = None,
        return_id: int | None = None,
        comment: str | None = None,
        ledger: bool = True,
    ) -> int | None:
        """Change a stock row and write the ledger row that explains it."""
        row = self.stock_row(pid, wid)
        new_level, new_alloc = row["level"] + level, row["allocated"] + allocated
        new_quar = row["quarantine"] + quarantine
        if new_level < 0 or new_quar < 0 or new_alloc < 0 or new_alloc > new_level:
            raise bad(
                f"{flow} of {quantity} x {self.sku(pid)} in warehouse {wid} would leave "
                f"level {new_level}, allocated {new_alloc}, quarantine {new_quar}"
            )
        s = db.stock.c
        self.conn.execute(
            update(db.stock)
            .where(s.product_id == pid, s.warehouse_id == wid)
            .values(level=new_level, allocated=new_alloc, quarantine=new_quar, updated_ms=self.now)
        )
        if not ledger:
            return None
        return self.conn.execute(
            insert(db.stock_flow).values(
                product_id=pid,
                warehouse_id=wid,
                at_ms=self.now,
                flow=flow,
                reason=reason,
                quantity=quantity,
                level_change=level,
                quarantine_change=quarantine,
                order_id=order_id,
                asn_id=asn_id,
                return_id=return_id,
                comment=comment,
            )
        ).inserted_primary_key[0]

    def allocate(self, pid: int, wid: int, want: int) -> int:
        row = self.stock_row(pid, wid)
        got = max(0, min(row["level"] - row["allocated"], want))
        if got:
            self.move(pid, wid, "Allocate", "", quantity=got, allocated=got, ledger=False)
        return got

    # ---- orders --------------------------------------------------------------------------------

    def enter(self, oid: int, status: int, next_ms: int | None, **values: Any) -> None:
        self.conn.execute(
            update(db.orders)
            .where(db.orders.c.id == oid)
            .values(status_id=status, next_event_ms=next_ms, last_updated_ms=self.now, **values)
        )

    def touch(self, oid: int) -> None:
        self.conn.execute(update(db.orders).where(db.orders.c.id == oid).values(last_updated_ms=self.now))

    def schedule_for(self, oid: int, status: int) -> int | None:
        """When an order that has just entered `status` next moves on its own."""
        b = self.b
        if status == NEW:
            return self.now + self.dur(oid, "print", b.hours_to_print)
        if status == PRINTED:
            return self.now + self.dur(oid, "pick1", b.hours_to_pick / 4)
        if status == AWAITINGPICKING:
            return self.now + self.dur(oid, "pick2", b.hours_to_pick / 4)
        if status == PICKINGSTARTED:
            return self.now + self.dur(oid, "pick3", b.hours_to_pick / 2)
        if status == PICKED:
            return self.now + self.dur(oid, "pack", b.hours_to_pack + b.hours_to_despatch)
        if status == ONBACKORDER:
            return self.now + HOUR_MS
        return None

    def insert_order(self, head: dict[str, Any], status: int = NEW) -> int:
        oid = self.conn.execute(
            insert(db.orders).values(
                **{"order_date_ms": self.now, **head},
                status_id=status,
                last_updated_ms=self.now,
                number_of_parcels=0,
                part=1,
                number_of_parts=1,
            )
        ).inserted_primary_key[0]
        self.conn.execute(update(db.orders).where(db.orders.c.id == oid).values(root_id=oid))
        return oid

    def insert_item(self, oid: int, item: dict[str, Any]) -> int:
        values = {
            "allocated": 0,
            "on_back_order": 0,
            "despatched": 0,
            "unit_price": Decimal(0),
            "unit_price_vat": Decimal(0),
            "discount": Decimal(0),
            **item,
            "order_id": oid,
        }
        return self.conn.execute(insert(db.order_items).values(**values)).inserted_primary_key[0]

    def allocate_order(self, oid: int) -> bool:
        """Allocate what each line still needs; True if anything changed."""
        changed = False
        for it in self.items(oid):
            need = it["quantity"] - it["allocated"] - it["despatched"]
            if need <= 0:
                continue
            got = self.allocate(it["product_id"], it["warehouse_id"], need)
            if got or it["on_back_order"] != need - got:
                changed = True
            self.conn.execute(
                update(db.order_items)
                .where(db.order_items.c.id == it["id"])
                .values(allocated=it["allocated"] + got, on_back_order=need - got)
            )
        return changed

    def fully_allocated(self, oid: int) -> bool:
        return all(it["on_back_order"] == 0 for it in self.items(oid))

    def create_order(self, head: dict[str, Any], items: list[dict[str, Any]]) -> int:
        oid = self.insert_order(head)
        for item in items:
            self.insert_item(oid, item)
        self.allocate_order(oid)
        status = NEW if self.fully_allocated(oid) else ONBACKORDER
        self.enter(oid, status, self.schedule_for(oid, status))
        return oid

    def add_part(self, o: dict[str, Any], status: int, next_ms: int | None) -> int:
        root = o["root_id"] or o["id"]
        parts = self.conn.execute(
            select(func.max(db.orders.c.part), func.count()).where(db.orders.c.root_id == root)
        ).one()
        keep = (
            "order_number",
            "ext_ref",
            "warehouse_id",
            "courier_service",
            "channel",
            "currency",
            "address",
            "order_date_ms",
        )
        new_id = self.conn.execute(
            insert(db.orders).values(
                **{k: o[k] for k in keep},
                status_id=status,
                last_updated_ms=self.now,
                number_of_parcels=0,
                part=parts[0] + 1,
                number_of_parts=parts[1] + 1,
                root_id=root,
                next_event_ms=next_ms,
            )
        ).inserted_primary_key[0]
        self.conn.execute(
            update(db.orders)
            .where(db.orders.c.root_id == root)
            .values(number_of_parts=parts[1] + 1, last_updated_ms=self.now)
        )
        return new_id

    def cancel(self, oid: int) -> None:
        o = self.order(oid)
        if o["status_id"] in CLOSED_STATUSES:
            raise conflict(f"Order {oid} is {STATUS_NAME[o['status_id']]} and cannot be cancelled")
        for it in self.items(oid):
            if it["allocated"]:
                self.move(
                    it["product_id"],
                    it["warehouse_id"],
                    "Unallocate",
                    "",
                    quantity=it["allocated"],
                    allocated=-it["allocated"],
                    ledger=False,
                )
            self.conn.execute(
                update(db.order_items)
                .where(db.order_items.c.id == it["id"])
                .values(allocated=0, on_back_order=0)
            )
        self.enter(oid, CANCELLED, None)

    def pack_and_hold(self, oid: int, hold: bool) -> None:
        o = self.order(oid)
        if hold:
            if o["status_id"] not in (NEW, PRINTED, AWAITINGPICKING, PICKINGSTARTED, PICKED):
                raise conflict(
                    f"Order {oid} is {STATUS_NAME[o['status_id']]}; only an order in progress "
                    "can be put on pack and hold"
                )
            self.enter(oid, PACKANDHOLD, None)
        else:
            if o["status_id"] != PACKANDHOLD:
                raise conflict(f"Order {oid} is {STATUS_NAME[o['status_id']]}, not PACKANDHOLD")
            self.enter(oid, PICKED, self.schedule_for(oid, PICKED))

    def on_order_event(self, oid: int) -> None:
        o = self.order(oid)
        status = o["status_id"]
        if status == NEW:
            self.maybe_split(o)
            self.enter(oid, PRINTED, self.schedule_for(oid, PRINTED))
        elif status == PRINTED:
            if chance(self.rng("order", oid, "cancel"), self.b.cancel_after_print_rate):
                self.cancel(oid)
            else:
                self.enter(oid, AWAITINGPICKING, self.schedule_for(oid, AWAITINGPICKING))
        elif status == AWAITINGPICKING:
            self.enter(oid, PICKINGSTARTED, self.schedule_for(oid, PICKINGSTARTED))
        elif status == PICKINGSTARTED:
            if not self.maybe_short_pick(o):
                self.enter(oid, PICKED, self.schedule_for(oid, PICKED))
        elif status == PICKED:
            self.despatch(o)
        elif status == ONBACKORDER:
            changed = self.allocate_order(oid)
            if self.fully_allocated(oid):
                self.enter(oid, NEW, self.schedule_for(oid, NEW))
            elif changed:
                self.enter(oid, ONBACKORDER, self.now + HOUR_MS)
            else:  # nothing new: no change, so LastUpdated stays put
                self.conn.execute(
                    update(db.orders).where(db.orders.c.id == oid).values(next_event_ms=self.now + HOUR_MS)
                )
        else:
            self.conn.execute(update(db.orders).where(db.orders.c.id == oid).values(next_event_ms=None))

    def maybe_split(self, o: dict[str, Any]) -> None:
        oid = o["id"]
        items = [it for it in self.items(oid) if it["quantity"] > 0]
        if o["number_of_parts"] != 1 or sum(it["quantity"] for it in items) < 2:
            return
        if not chance(self.rng("order", oid, "split"), self.b.split_rate):
            return
        wave = self.dur(oid, "wave", self.b.hours_to_print + self.b.hours_to_pick)
        new_id = self.add_part(o, NEW, self.now + wave)
        if len(items) >= 2:
            moved = [it["id"] for it in items[len(items) // 2 :]]
            self.conn.execute(
                update(db.order_items).where(db.order_items.c.id.in_(moved)).values(order_id=new_id)
            )
        else:
            it = items[0]
            k = it["quantity"] // 2
            self.conn.execute(
                update(db.order_items)
                .where(db.order_items.c.id == it["id"])
                .values(quantity=it["quantity"] - k, allocated=it["allocated"] - k)
            )
            keep = ("product_id", "warehouse_id", "unit_price", "unit_price_vat", "discount")
            self.insert_item(new_id, {**{c: it[c] for c in keep}, "quantity": k, "allocated": k})

    def maybe_short_pick(self, o: dict[str, Any]) -> bool:
        """Pick one line short; True if the whole order went to back order."""
        oid = o["id"]
        rng = self.rng("order", oid, "short")
        if not chance(rng, self.b.short_pick_rate):
            return False
        items = [it for it in self.items(oid) if it["quantity"] > 0]
        if not items:
            return False
        it = items[rng.randrange(len(items))]
        k = rng.randint(1, it["quantity"])
        pid, wid = it["product_id"], it["warehouse_id"]
        self.move(
            pid,
            wid,
            "CountCorrection",
            "Short pick: stock not found at location",
            quantity=k,
            level=-k,
            allocated=-k,
            order_id=oid,
        )
        if k == it["quantity"] and len(items) == 1:
            self.conn.execute(
                update(db.order_items)
                .where(db.order_items.c.id == it["id"])
                .values(allocated=0, on_back_order=k)
            )
            self.enter(oid, ONBACKORDER, self.schedule_for(oid, ONBACKORDER))
            return True
        if k == it["quantity"]:
            self.conn.execute(delete(db.order_items).where(db.order_items.c.id == it["id"]))
        else:
            self.conn.execute(
                update(db.order_items)
                .where(db.order_items.c.id == it["id"])
                .values(quantity=it["quantity"] - k, allocated=it["allocated"] - k)
            )
        new_id = self.add_part(o, ONBACKORDER, self.now + HOUR_MS)
        keep = ("product_id", "warehouse_id", "unit_price", "unit_price_vat", "discount")
        self.insert_item(new_id, {**{c: it[c] for c in keep}, "quantity": k, "on_back_order": k})
        return False

    def despatch(self, o: dict[str, Any], quantities: dict[int, int] | None = None) -> None:
        """Despatch the order's items (or, at load, the given item quantities) in one or more parcels."""
        oid = o["id"]
        rng = self.rng("order", oid, "parcels")
        units: list[tuple[int, int]] = []  # (item id, product id) per unit, for sharing out parcels
        for it in self.items(oid):
            qty = it["quantity"] if quantities is None else quantities.get(it["id"], 0)
            if qty <= 0:
                continue
            release = min(it["allocated"], qty)
            self.move(
                it["product_id"],
                it["warehouse_id"],
                "Despatch",
                f"Order {o['order_number']} despatched",
                quantity=qty,
                level=-qty,
                allocated=-release,
                order_id=oid,
            )
            self.conn.execute(
                update(db.order_items)
                .where(db.order_items.c.id == it["id"])
                .values(
                    despatched=it["despatched"] + qty, allocated=it["allocated"] - release, on_back_order=0
                )
            )
            units.extend([(it["id"], it["product_id"])] * qty)
        parcels = rng.choice([2, 3]) if chance(rng, self.b.multi_parcel_rate) else 1
        parcels = max(1, min(parcels, len(units)))
        prefix = "".join(w[0] for w in o["courier_service"].upper().split() if w[0].isalpha())[:2].ljust(
            2, "X"
        )
        first_tn = first_url = None
        for n in range(parcels):
            share: dict[int, int] = defaultdict(int)
            for _, pid in units[n::parcels]:
                share[pid] += 1
            tn = f"{prefix}{rng.randrange(10**8, 10**9)}GB"
            url = f"https://tracking.sandbox.invalid/{tn}"
            first_tn, first_url = first_tn or tn, first_url or url
            self.conn.execute(
                insert(db.shipments).values(
                    order_id=oid,
                    number=n + 1,
                    shipment_ms=self.now,
                    tracking_number=tn,
                    tracking_url=url,
                    items=jsonutil.dumps(
                        [
                            {"ProductId": p, "SKU": self.sku(p), "Quantity": q}
                            for p, q in sorted(share.items())
                        ]
                    ),
                )
            )
        hidden = None
        if chance(seeded(self.faults["seed"], "late", oid), Decimal(self.faults["late_rate"])):
            hidden = self.now + int(self.faults["late_seconds"]) * 1000
        return_due = None
        if quantities is None and self.lines_to_return(oid):
            return_due = self.now + self.rng("order", oid, "return-due").randint(24, 120) * HOUR_MS
        self.despatched = True
        self.enter(
            oid,
            DESPATCHED,
            None,
            despatch_ms=self.now,
            tracking_number=first_tn,
            tracking_url=first_url,
            number_of_parcels=parcels,
            hidden_until_ms=hidden,
            return_due_ms=return_due,
        )

    # ---- returns -------------------------------------------------------------------------------

    def create_return(self, oid: int, reference: str | None = None) -> int:
        o = self.order(oid)
        if o["status_id"] not in (DESPATCHED, 11, 12):
            raise conflict(
                f"Order {oid} is {STATUS_NAME[o['status_id']]}; only a despatched order can be returned"
            )
        return self.conn.execute(
            insert(db.returns).values(
                order_id=oid,
                warehouse_id=o["warehouse_id"],
                reference=reference,
                confirmed=0,
                created_ms=self.now,
                last_updated_ms=self.now,
            )
        ).inserted_primary_key[0]

    def returnable(self, oid: int, pid: int) -> tuple[int, int]:
        """(units still returnable, warehouse) for one product of a despatched order."""
        items = [it for it in self.items(oid) if it["product_id"] == pid and it["despatched"] > 0]
        if not items:
            raise bad(f"product {self.sku(pid)} was not despatched on order {oid}")
        r, ri = db.returns.c, db.return_items.c
        already = self.conn.execute(
            select(func.coalesce(func.sum(ri.quantity), 0))
            .select_from(db.return_items.join(db.returns, r.id == ri.return_id))
            .where(r.order_id == oid, ri.product_id == pid)
        ).scalar_one()
        return sum(it["despatched"] for it in items) - already, items[0]["warehouse_id"]

    def add_return_item(
        self, rid: int, pid: int, qty: int, reason_id: int, action: str, comments: str | None, field: str = ""
    ) -> int:
        ret = self.conn.execute(select(db.returns).where(db.returns.c.id == rid)).mappings().first()
        if ret is None:
            raise not_found(f"Return {rid} not found")
        if ret["confirmed"]:
            raise conflict(f"Return {rid} is already confirmed")
        left, wid = self.returnable(ret["order_id"], pid)
        if qty > left:
            raise bad(
                f"{field}Quantity: {qty} x {self.sku(pid)} exceeds the {left} still returnable "
                f"on order {ret['order_id']}"
            )
        item_id = self.conn.execute(
            insert(db.return_items).values(
                return_id=rid,
                product_id=pid,
                warehouse_id=wid,
                quantity=qty,
                reason_id=reason_id,
                action=action,
                comments=comments,
            )
        ).inserted_primary_key[0]
        self.conn.execute(update(db.returns).where(db.returns.c.id == rid).values(last_updated_ms=self.now))
        return item_id

    def confirm_return(self, rid: int) -> None:
        ret = self.conn.execute(select(db.returns).where(db.returns.c.id == rid)).mappings().first()
        if ret is None:
            raise not_found(f"Return {rid} not found")
        if ret["confirmed"]:
            raise conflict(f"Return {rid} is already confirmed")
        items = (
            self.conn.execute(select(db.return_items).where(db.return_items.c.return_id == rid))
            .mappings()
            .all()
        )
        if not items:
            raise bad(f"Return {rid} has no items to confirm")
        for it in items:
            q, pid, wid = it["quantity"], it["product_id"], it["warehouse_id"]
            common = {"quantity": q, "order_id": ret["order_id"], "return_id": rid, "comment": it["comments"]}
            if it["action"] == "Restock":
                self.move(pid, wid, "Return", "Returned to stock", level=q, **common)
            elif it["action"] == "Quarantine":
                self.move(pid, wid, "ReturnToQuarantine", "Returned into quarantine", quarantine=q, **common)
            else:
                self.move(pid, wid, "Scrap_Return", "Returned and scrapped", **common)
        self.conn.execute(
            update(db.returns)
            .where(db.returns.c.id == rid)
            .values(confirmed=1, confirmed_ms=self.now, last_updated_ms=self.now)
        )

    def lines_to_return(self, oid: int) -> list[dict[str, Any]]:
        """The despatched lines the customer will send back: each with chance `return_rate`."""
        rng = self.rng("order", oid, "return")
        items = [it for it in self.items(oid) if it["despatched"] > 0]
        return [it for it in items if chance(rng, self.b.return_rate)]

    def auto_return(self, oid: int) -> None:
        self.conn.execute(update(db.orders).where(db.orders.c.id == oid).values(return_due_ms=None))
        rng = self.rng("order", oid, "return-items")
        grading = sorted(self.b.return_grading.items())
        total = sum(w for _, w in grading)
        lines = self.lines_to_return(oid)
        if total <= 0 or not lines:
            return
        rid = self.create_return(oid, reference=f"AUTO-{oid}")
        for it in lines:
            qty = rng.randint(1, it["despatched"])
            pick = Decimal(rng.randrange(1_000_000)) / 1_000_000 * total
            grade = grading[-1][0]
            for name, weight in grading:
                if pick < weight:
                    grade = name
                    break
                pick -= weight
            reason = rng.choice(RETURN_REASONS)[0]
            left, _ = self.returnable(oid, it["product_id"])
            if min(qty, left) > 0:
                self.add_return_item(
                    rid, it["product_id"], min(qty, left), reason, RETURN_ACTIONS[grade], None
                )
        count = select(func.count()).select_from(db.return_items).where(db.return_items.c.return_id == rid)
        if self.conn.execute(count).scalar_one():
            self.confirm_return(rid)

    # ---- goods in ------------------------------------------------------------------------------

    def asn(self, aid: int) -> dict[str, Any]:
        row = self.conn.execute(select(db.asns).where(db.asns.c.id == aid)).mappings().first()
        if row is None:
            raise not_found(f"ASN {aid} not found")
        return dict(row)

    def asn_items(self, aid: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            select(db.asn_items).where(db.asn_items.c.asn_id == aid).order_by(db.asn_items.c.id)
        ).mappings()
        return [dict(r) for r in rows]

    def create_asn(self, head: dict[str, Any], items: list[dict[str, Any]], status: str = "New") -> int:
        aid = self.conn.execute(
            insert(db.asns).values(**head, status=status, created_ms=self.now, last_updated_ms=self.now)
        ).inserted_primary_key[0]
        for it in items:
            self.conn.execute(insert(db.asn_items).values(asn_id=aid, received=0, booked=0, **it))
        return aid

    def _asn_open(self, aid: int) -> dict[str, Any]:
        a = self.asn(aid)
        if a["status"] == "BookedIn":
            raise conflict(f"ASN {aid} is already booked in")
        return a

    def _asn_item_for(self, aid: int, pid: int, field: str) -> dict[str, Any]:
        for it in self.asn_items(aid):
            if it["product_id"] == pid:
                return it
        raise bad(f"{field}: product {self.sku(pid)} is not on ASN {aid}")

    def confirm_asn(self, aid: int) -> None:
        a = self._asn_open(aid)
        if a["status"] != "New":
            raise conflict(f"ASN {aid} is {a['status']}, not New")
        self.conn.execute(
            update(db.asns)
            .where(db.asns.c.id == aid)
            .values(status="AwaitingDelivery", last_updated_ms=self.now)
        )

    def receive_asn(self, aid: int, lines: list[tuple[int, int, str]]) -> None:
        self._asn_open(aid)
        for pid, qty, field in lines:
            it = self._asn_item_for(aid, pid, field)
            if it["received"] + qty > it["expected"]:
                raise bad(
                    f"{field}: receiving {qty} x {self.sku(pid)} would exceed the {it['expected']} expected"
                )
            self.conn.execute(
                update(db.asn_items)
                .where(db.asn_items.c.id == it["id"])
                .values(received=it["received"] + qty)
            )
        self.conn.execute(
            update(db.asns)
            .where(db.asns.c.id == aid)
            .values(status="AwaitingPutAway", last_updated_ms=self.now)
        )

    def _book(self, a: dict[str, Any], it: dict[str, Any], qty: int, reason: str) -> None:
        self.move(
            it["product_id"], a["warehouse_id"], "ASNStockIN", reason, quantity=qty, level=qty, asn_id=a["id"]
        )
        self.conn.execute(
            update(db.asn_items)
            .where(db.asn_items.c.id == it["id"])
            .values(booked=it["booked"] + qty, received=max(it["received"], it["booked"] + qty))
        )

    def book_in_asn(self, aid: int) -> None:
        """Book in what was received and not yet booked; if nothing is waiting, all still expected."""
        a = self._asn_open(aid)
        items = self.asn_items(aid)
        waiting = any(it["received"] > it["booked"] for it in items)
        for it in items:
            qty = (it["received"] if waiting else it["expected"]) - it["booked"]
            if qty > 0:
                self._book(a, it, qty, f"ASN {aid} booked in")
        self.conn.execute(
            update(db.asns).where(db.asns.c.id == aid).values(status="BookedIn", last_updated_ms=self.now)
        )

    def book_in_partial(self, aid: int, lines: list[tuple[int, int, str]]) -> None:
        a = self._asn_open(aid)
        for pid, qty, field in lines:
            it = self._asn_item_for(aid, pid, field)
            if it["booked"] + qty > it["expected"]:
                raise bad(
                    f"{field}: booking in {qty} x {self.sku(pid)} would exceed the {it['expected']} "
                    f"expected ({it['booked']} already booked)"
                )
            self._book(a, it, qty, f"ASN {aid} part booked in")
        done = all(it["booked"] >= it["expected"] for it in self.asn_items(aid))
        self.conn.execute(
            update(db.asns)
            .where(db.asns.c.id == aid)
            .values(status="BookedIn" if done else "PartiallyBookedIn", last_updated_ms=self.now)
        )

    def auto_book_in(self, aid: int) -> None:
        a = self.asn(aid)
        for it in self.asn_items(aid):
            if it["expected"] > it["booked"]:
                self._book(a, it, it["expected"] - it["booked"], f"ASN {aid} delivered and booked in")
        self.conn.execute(
            update(db.asns).where(db.asns.c.id == aid).values(status="BookedIn", last_updated_ms=self.now)
        )

    # ---- shrink --------------------------------------------------------------------------------

    def shrink(self, day_ms: int) -> None:
        """Evening count: lose about `shrink_rate` of the day's despatched units to damage and miscounts."""
        f = db.stock_flow.c
        sold = self.conn.execute(
            select(f.product_id, f.warehouse_id, func.sum(f.quantity))
            .where(f.flow == "Despatch", f.at_ms > day_ms - DAY_MS, f.at_ms <= day_ms)
            .group_by(f.product_id, f.warehouse_id)
            .order_by(f.product_id, f.warehouse_id)
        ).all()
        for pid, wid, units in sold:
            rng = self.rng("shrink", day_ms, pid, wid)
            expected = self.b.shrink_rate * units
            lost = int(expected) + (1 if chance(rng, expected - int(expected)) else 0)
            row = self.stock_row(pid, wid)
            lost = min(lost, row["level"] - row["allocated"])
            if lost <= 0:
                continue
            damaged = sum(1 for _ in range(lost) if rng.randrange(2) == 0)
            if damaged:
                self.move(pid, wid, "Scrap", "Damaged in warehouse", quantity=damaged, level=-damaged)
            if lost - damaged:
                self.move(
                    pid,
                    wid,
                    "CountCorrection",
                    "Stock count correction: units missing",
                    quantity=lost - damaged,
                    level=-(lost - damaged),
                )

    # ---- the clock -----------------------------------------------------------------------------

    def advance(self, target_ms: int) -> int:
        """Replay, in time order, every event due up to `target_ms`; returns how many ran."""
        o, a = db.orders.c, db.asns.c
        # Built once: statement construction, not SQLite, is the cost of a busy replay.
        next_order = (
            select(o.id, o.next_event_ms)
            .where(o.next_event_ms <= target_ms)
            .order_by(o.next_event_ms, o.id)
            .limit(1)
        )
        next_asn = (
            select(a.id, a.estimated_ms)
            .where(a.estimated_ms <= target_ms, a.status.in_(("New", "AwaitingDelivery")))
            .order_by(a.estimated_ms, a.id)
            .limit(1)
        )
        next_return = (
            select(o.id, o.return_due_ms)
            .where(o.return_due_ms <= target_ms)
            .order_by(o.return_due_ms, o.id)
            .limit(1)
        )
        # ASNs and returns only change when their own events run (or, for returns, on a despatch).
        asn_row = self.conn.execute(next_asn).first()
        return_row = self.conn.execute(next_return).first()
        shrink_ms = get_meta(self.conn, "next_shrink_ms")
        ran = 0
        while True:
            candidates: list[tuple[int, int, int, str]] = []
            row = self.conn.execute(next_order).first()
            if row:
                candidates.append((row[1], 1, row[0], "order"))
            if asn_row:
                candidates.append((asn_row[1], 0, asn_row[0], "asn"))
            if return_row:
                candidates.append((return_row[1], 2, return_row[0], "return"))
            if shrink_ms is not None and shrink_ms <= target_ms:
                candidates.append((shrink_ms, 3, 0, "shrink"))
            if not candidates:
                break
            at, _, ident, kind = min(candidates)
            self.now = max(self.now, at)
            self.despatched = False
            if kind == "order":
                self.on_order_event(ident)
            elif kind == "asn":
                self.auto_book_in(ident)
                asn_row = self.conn.execute(next_asn).first()
            elif kind == "return":
                self.auto_return(ident)
            else:
                self.shrink(shrink_ms)
                shrink_ms += DAY_MS
                set_meta(self.conn, "next_shrink_ms", shrink_ms)
            if kind == "return" or self.despatched:
                return_row = self.conn.execute(next_return).first()
            ran += 1
        self.now = max(self.now, target_ms)
        return ran
