"""What the Sage 200 simulator does: reads, despatch, orders, returns, stocktakes, locks and tokens.

Every write runs in one SQLite transaction under one lock, so a refused request changes nothing.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sage_wms_pipeline import jsonutil, settings
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.simulators.sage200 import resources as R
from sage_wms_pipeline.simulators.sage200.odata import ODataError, build_query
from sage_wms_pipeline.simulators.sage200.store import (
    COMPANY_ID,
    DB_FILE,
    DOCUMENT_STATUS,
    LINE_TYPES,
    SITE_ID,
    SOURCE_CUSTOMER,
    SOURCE_INTERNAL,
    SOURCE_SUPPLIER,
    VAT_RATE,
    Clock,
    build_database,
    connect,
    dec,
    five,
    holding_quantities,
    iso,
    money,
    order_totals,
    txt,
)

DEFAULT_LOCK_MESSAGE = (
    "The record is in use by another user and cannot be updated: sales order {document_no}. "
    "Please try again later."
)
API_LOCK_SECONDS = 300


class SageError(Exception):
    """A refusal with Sage's status (400 unless said otherwise), a message, and the field at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.field, self.status = message, field, status

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "field": self.field}


def validation_error(exc: ValidationError, prefix: str = "") -> SageError:
    """First pydantic error as a SageError naming the field path, e.g. `items[0].quantity`."""
    err = exc.errors()[0]
    path = prefix
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return SageError(f"{path or 'body'}: {err['msg']}", path or None)


class Faults(BaseModel):
    """Knobs at /_sandbox/faults. Random draws come from one generator seeded with `seed`."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 1
    rate_429: Decimal = Field(default=Decimal(0), ge=0, le=1)
    retry_after_seconds: int = Field(default=1, ge=0)
    rate_5xx: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_504: Decimal = Field(default=Decimal(0), ge=0, le=1)
    slow_seconds: Decimal = Field(default=Decimal(0), ge=0)
    expire_next_tokens: int = Field(default=0, ge=0, description="The next N token checks fail and expire it")
    lock_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    lock_seconds: Decimal = Field(default=Decimal(5), ge=0)
    lock_status: int = Field(default=400, ge=400, le=599)
    lock_message: str = DEFAULT_LOCK_MESSAGE
    access_token_seconds: int = Field(default=28800, ge=1)
    refresh_token_seconds: int = Field(default=90 * 86400, ge=1)


class DropRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = "POST"
    path_contains: str = ""
    status: int = Field(default=504, ge=500, le=599)


# --- request bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    # Sage echoes read-only fields back in GET results; clients may send them back, so ignore extras
    model_config = ConfigDict(extra="ignore")


NonNegative = Annotated[Decimal, Field(ge=0)]


class DespatchItem(_Body):
    id: int
    quantity: Annotated[Decimal, Field(gt=0)]


class TrackingItem(_Body):
    courier_id: int | None = None
    consignment_no: str = Field(default="", max_length=60)
    weight: NonNegative = Decimal(0)
    pieces: int = Field(default=0, ge=0)
    notes: str = Field(default="", max_length=256)


class ConfirmDespatch(_Body):
    sop_order_return_id: int
    despatch_receipt_date: datetime | None = None
    confirmation_intent_type: str | None = Field(default=None, max_length=50)
    items: list[DespatchItem] = Field(min_length=1)
    tracking_items: list[TrackingItem] = Field(default_factory=list)


LineTypeLiteral = Literal[
    "EnumLineTypeStandard", "EnumLineTypeFreeText", "EnumLineTypeCharge", "EnumLineTypeComment"
]


class OrderLineIn(_Body):
    line_type: LineTypeLiteral = "EnumLineTypeStandard"
    product_id: int | None = None
    warehouse_id: int | None = None
    code: str = Field(default="", max_length=30)
    description: str = Field(default="", max_length=6000)
    line_quantity: NonNegative = Decimal(0)
    selling_unit_price: NonNegative = Decimal(0)
    show_on_customer_docs: bool = True
    restock: bool = True  # returns only


class OrderIn(_Body):
    customer_id: int
    document_no: str | None = Field(default=None, max_length=20)
    document_date: datetime | None = None
    customer_document_no: str = Field(default="", max_length=30)
    requested_delivery_date: datetime | None = None
    promised_delivery_date: datetime | None = None
    analysis_code_1: str = Field(default="", max_length=60)
    lines: list[OrderLineIn] = Field(min_length=1)


class OrderLineUpdate(_Body):
    id: int | None = None
    line_quantity: NonNegative | None = None
    to_allocate_quantity: NonNegative | None = None
    is_to_delete: bool = False


class OrderUpdate(_Body):
    lock_id: int | None = None
    is_editing: bool | None = None
    customer_document_no: str | None = Field(default=None, max_length=30)
    requested_delivery_date: datetime | None = None
    promised_delivery_date: datetime | None = None
    analysis_code_1: str | None = Field(default=None, max_length=60)
    lines: list[OrderLineUpdate] = Field(default_factory=list)


class StocktakeItemIn(_Body):
    warehouse_holding_id: int | None = None
    item_code: str | None = Field(default=None, max_length=30)
    is_selected: bool = False


class StocktakeIn(_Body):
    id: int | None = None
    warehouse_id: int | None = None
    stocktake_name: str = Field(default="", max_length=60)
    stocktake_type: str = Field(default="EnumStocktakeTypeByStockItem", max_length=50)
    show_expected_quantities: bool = True
    nominal_narrative: str = Field(default="", max_length=6000)
    advance_status: bool = False
    stocktake_items: list[StocktakeItemIn] = Field(default_factory=list)


class CountSheetItemIn(_Body):
    actual_quantity_in_stock: NonNegative | None = None
    actual_quantity_entered: bool | None = None
    discrepancy_narrative: str | None = Field(default=None, max_length=6000)


M = TypeVar("M", bound=BaseModel)


class GoodsIn(_Body):
    reference: str | None = Field(default=None, max_length=20)
    sku: str | None = Field(default=None, max_length=30)
    warehouse: str | None = Field(default=None, max_length=20)
    quantity: Annotated[Decimal, Field(gt=0)] | None = None
    unit_cost: NonNegative | None = None


class OrderStatusIn(_Body):
    status: str


def parse_body(model: type[M], raw: bytes) -> M:
    try:
        data = jsonutil.loads(raw) if raw.strip() else None
    except ValueError as exc:
        raise SageError(f"body: malformed JSON ({exc})", "body") from None
    if not isinstance(data, dict):
        raise SageError("body: expected a JSON object", "body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


ST_ENTER, ST_APPROVE, ST_COMPLETE = "Enter Values", "Requires Approval", "Complete"


class Sage200:
    """The simulator's state: one SQLite file, one lock, one clock, one fault generator."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DB_FILE
        self.lock = threading.RLock()
        self.clock = Clock()
        self.conn: sqlite3.Connection | None = None
        self.drop_rules: list[DropRule] = []
        self.random_locks: dict[str, float] = {}
        # Faults served since the last load, so a benchmark can say what the pipeline met.
        self.faults_served: Counter[str] = Counter()
        with self.lock:
            if not self.path.exists():
                build_database(self.path, self.demo_scenario(), self.clock)
            self._open()

    # --- lifecycle ------------------------------------------------------------------------------

    @staticmethod
    def demo_scenario() -> Scenario:
        return Scenario.model_validate(jsonutil.loads(settings.demo_scenario_path().read_bytes()))

    def _open(self) -> None:
        self.conn = connect(self.path)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.faults = Faults.model_validate_json(self.meta("faults") or "{}")
        self.rng = random.Random(self.faults.seed)

    def load(self, scenario: Scenario, faults: Faults | None = None) -> None:
        with self.lock:
            # Sage ID is its own service: tokens outlive a change of company data
            tokens = self.db.execute("SELECT * FROM access_tokens").fetchall() if self.conn else []
            refresh = (
                self.db.execute("SELECT * FROM refresh_tokens WHERE token <> 'sandbox-refresh'").fetchall()
                if self.conn
                else []
            )
            build_database(self.path, scenario, self.clock)  # raises before touching the live file
            if self.conn is not None:
                self.conn.close()
            self._open()
            self.db.executemany("INSERT INTO access_tokens VALUES (?, ?, ?)", [tuple(r) for r in tokens])
            self.db.executemany("INSERT INTO refresh_tokens VALUES (?, ?, ?, ?)", [tuple(r) for r in refresh])
            sage = scenario.faults.sage
            self.set_faults(
                faults
                or Faults(
                    lock_rate=sage.lock_rate,
                    lock_seconds=sage.lock_seconds,
                    rate_429=sage.rate_429,
                    rate_5xx=sage.rate_5xx,
                    rate_504=sage.rate_504,
                    slow_seconds=sage.slow_seconds,
                )
            )
            self.drop_rules.clear()
            self.random_locks.clear()
            self.faults_served.clear()

    def reset(self) -> None:
        self.load(self.demo_scenario(), Faults())

    @property
    def db(self) -> sqlite3.Connection:
        assert self.conn is not None
        return self.conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def set_faults(self, faults: Faults, reseed: bool = True) -> None:
        with self.lock:
            self.faults = faults
            if reseed:
                self.rng = random.Random(faults.seed)
            self.set_meta("faults", faults.model_dump_json())

    def draw(self) -> float:
        with self.lock:
            return self.rng.random()

    # --- auth -----------------------------------------------------------------------------------

    def token_grant(self, form: Mapping[str, str]) -> dict[str, Any]:
        """Sage ID's token endpoint: authorization_code and refresh_token grants, rotating refresh tokens."""
        grant = form.get("grant_type", "")
        with self.write() as c:
            client = c.execute(
                "SELECT client_secret FROM oauth_clients WHERE client_id = ?", (form.get("client_id", ""),)
            ).fetchone()
            if client is None or client[0] != form.get("client_secret"):
                raise SageError("invalid_client", status=401)
            now = time.time()
            if grant == "authorization_code":
                code = c.execute(
                    "SELECT reusable, used FROM auth_codes WHERE code = ? AND client_id = ?",
                    (form.get("code", ""), form["client_id"]),
                ).fetchone()
                if code is None or (code["used"] and not code["reusable"]):
                    raise SageError("invalid_grant: unknown or used authorization code", "code")
                c.execute("UPDATE auth_codes SET used = 1 WHERE code = ?", (form["code"],))
            elif grant == "refresh_token":
                row = c.execute(
                    "SELECT expires_at, used_at FROM refresh_tokens WHERE token = ? AND client_id = ?",
                    (form.get("refresh_token", ""), form["client_id"]),
                ).fetchone()
                if row is None or row["used_at"] is not None or row["expires_at"] <= now:
                    raise SageError("invalid_grant: unknown, used or expired refresh token", "refresh_token")
                c.execute(
                    "UPDATE refresh_tokens SET used_at = ? WHERE token = ?", (now, form["refresh_token"])
                )
            else:
                raise SageError(f"unsupported_grant_type: {grant!r}", "grant_type")
            access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            c.execute(
                "INSERT INTO access_tokens VALUES (?, ?, ?)",
                (access, form["client_id"], now + self.faults.access_token_seconds),
            )
            c.execute(
                "INSERT INTO refresh_tokens VALUES (?, ?, ?, NULL)",
                (refresh, form["client_id"], now + self.faults.refresh_token_seconds),
            )
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.faults.access_token_seconds,
            "scope": "openid profile email offline_access",
        }

    def token_valid(self, token: str) -> bool:
        with self.lock:
            if self.faults.expire_next_tokens > 0:
                left = self.faults.expire_next_tokens - 1
                self.set_faults(self.faults.model_copy(update={"expire_next_tokens": left}), reseed=False)
                self.db.execute("UPDATE access_tokens SET expires_at = 0 WHERE token = ?", (token,))
                return False
            row = self.db.execute("SELECT expires_at FROM access_tokens WHERE token = ?", (token,)).fetchone()
            return row is not None and row[0] > time.time()

    def sites(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "company_id": COMPANY_ID,
                    "company_name": self.meta("company_name"),
                    "site_id": SITE_ID,
                    "site_name": self.meta("site_name"),
                    "site_short_name": (self.meta("site_name") or "")[:10],
                }
            ]

    # --- generic reads --------------------------------------------------------------------------

    def list(
        self, res: R.Resource, params: Mapping[str, str], where: str = "", where_params: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        q = build_query(params, res.fields, res.name, res.default_order, res.expandable)
        clauses = [c for c in (where, q.where) if c]
        sql = f"SELECT * FROM {res.table}"
        if clauses:
            sql += " WHERE " + " AND ".join(f"({c})" for c in clauses)
        sql += f" ORDER BY {q.order_by} LIMIT ? OFFSET ?"
        with self.lock:
            rows = self.db.execute(sql, (*where_params, *q.params, q.top, q.skip)).fetchall()
            items = [res.to_json(r) for r in rows]
            if "lines" in q.expand:
                self._attach_lines(res, items)
        return [_select(item, q.select) for item in items]

    def _attach_lines(self, res: R.Resource, items: list[dict[str, Any]]) -> None:
        line_res, key = (
            (R.SOP_ORDER_LINE, "sop_order_id") if res is R.SOP_ORDER else (R.SOP_RETURN_LINE, "sop_return_id")
        )
        by_parent: dict[int, list[dict[str, Any]]] = {item["id"]: [] for item in items}
        ids = list(by_parent)
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT * FROM {line_res.table} WHERE {key} IN ({marks}) ORDER BY {key}, line_number", chunk
            ):
                by_parent[row[key]].append(line_res.to_json(row))
        for item in items:
            item["lines"] = by_parent[item["id"]]

    def get(self, res: R.Resource, entity_id: int, params: Mapping[str, str]) -> dict[str, Any]:
        items = self.list(
            res, {k: v for k, v in params.items() if k in ("$select", "$expand")}, '"id" = ?', (entity_id,)
        )
        if not items:
            raise SageError(f"{res.name}: no record with id {entity_id}", "id", status=404)
        return items[0]

    def order(self, order_id: int, params: Mapping[str, str]) -> dict[str, Any]:
        expand = [p.strip() for p in params.get("$expand", "").split(",") if p.strip()]
        lock_id = None
        if "is_to_lock" in expand:
            lock_id = self.api_lock(order_id)
        item = self.get(R.SOP_ORDER, order_id, params)
        if lock_id is not None:
            item["lock_id"] = lock_id
            item["is_editing"] = True
        return item

    def line(self, line_id: int, order_id: int | None = None) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute("SELECT * FROM sop_order_lines WHERE id = ?", (line_id,)).fetchone()
        if row is None or (order_id is not None and row["sop_order_id"] != order_id):
            raise SageError(f"sop_order_lines: no record with id {line_id}", "id", status=404)
        return R.SOP_ORDER_LINE.to_json(row)

    def sop_settings(self) -> dict[str, Any]:
        with self.lock:
            stamp = self.meta("settings_updated")
            return {
                "id": 1,
                "auto_generate_order_return_numbers": True,
                "allocate_stock_on_order_entry": self.meta("allocate_stock_on_order_entry") == "1",
                "update_stock_on_despatch": self.meta("update_stock_on_despatch") == "1",
                "record_cancelled_order_lines": False,
                "print_despatch_notes": False,
                "default_free_text_confirm_intent_type": "ConfirmOnDespatch",
                "default_service_labour_confirm_intent_type": "Confirm",
                "are_prices_tax_inclusive": False,
                "record_tracking_on_despatch": True,
                "date_time_created": stamp,
                "date_time_updated": stamp,
            }

    def stock_settings(self) -> dict[str, Any]:
        with self.lock:
            stamp = self.meta("settings_updated")
        return {
            "id": 1,
            "use_multiple_locations": True,
            "use_search_categories": False,
            "integrate_stock_management_with_nominal": True,
            "generate_cos_for_sop": True,
            "allow_negative_stocktake": False,
            "allow_negative_stocktake_with_purchase_order": False,
            "profit_percent_of_revenue": False,
            "record_numbers_on_goods_received": False,
            "allocate_individual_items": False,
            "allow_fulfilment_from_stock": True,
            "allow_fulfilment_from_supplier_via_stock": False,
            "allow_fulfilment_from_supplier_direct_to_customer": False,
            "use_landed_costs": False,
            "internal_areas": [],
            "date_time_created": stamp,
            "date_time_updated": stamp,
        }

    def update_settings(self, values: Mapping[str, Any]) -> dict[str, Any]:
        allowed = ("update_stock_on_despatch", "allocate_stock_on_order_entry")
        with self.write():
            for key, value in values.items():
                if key not in allowed:
                    raise SageError(f"{key}: not a simulator setting (use one of {', '.join(allowed)})", key)
                if not isinstance(value, bool):
                    raise SageError(f"{key}: must be true or false", key)
                self.set_meta(key, "1" if value else "0")
            self.set_meta("settings_updated", self.clock.stamp())
        return self.sop_settings()

    # --- locks ----------------------------------------------------------------------------------

    def hold_record(self, document_no: str, seconds: Decimal, source: str = "desktop") -> dict[str, Any]:
        with self.write() as c:
            if c.execute("SELECT 1 FROM sop_orders WHERE document_no = ?", (document_no,)).fetchone() is None:
                raise SageError(f"document_no: no sales order {document_no!r}", "document_no")
            until = time.time() + float(seconds)
            c.execute("INSERT OR REPLACE INTO record_locks VALUES (?, ?, ?)", (document_no, until, source))
        return {
            "document_no": document_no,
            "expires_at": iso(datetime.fromtimestamp(until).astimezone()),
            "source": source,
        }

    def release_record(self, document_no: str) -> bool:
        with self.write() as c:
            random_lock = self.random_locks.pop(document_no, None) is not None
            return (
                c.execute("DELETE FROM record_locks WHERE document_no = ?", (document_no,)).rowcount > 0
                or random_lock
            )

    def locks(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM record_locks WHERE expires_at > ? ORDER BY document_no", (time.time(),)
            ).fetchall()
        now = time.time()
        held = [(r["document_no"], r["source"], r["expires_at"]) for r in rows]
        held += [(no, "random", until) for no, until in self.random_locks.items() if until > now]
        return [
            {"document_no": no, "source": source, "seconds_left": round(until - now, 3)}
            for no, source, until in sorted(held)
        ]

    def _lock_error(self, document_no: str, source: str) -> SageError:
        self.faults_served[f"refused_{source}_lock"] += 1
        text = self.faults.lock_message.replace("{document_no}", document_no)
        return SageError(text, status=self.faults.lock_status)

    def check_locks(self, c: sqlite3.Connection, order: sqlite3.Row, lock_id: int | None = None) -> None:
        """Refuse a write to an order someone else holds: desktop user, random lock or API edit lock."""
        now = time.time()
        held = c.execute(
            "SELECT expires_at FROM record_locks WHERE document_no = ?", (order["document_no"],)
        ).fetchone()
        if held is not None and held[0] > now:
            raise self._lock_error(order["document_no"], "desktop")
        if self.random_locks.get(order["document_no"], 0) > now:
            raise self._lock_error(order["document_no"], "random")
        if self.faults.lock_rate > 0 and Decimal(str(self.draw())) < self.faults.lock_rate:
            # kept in memory: the request's transaction is rolled back, the lock must outlive it
            self.random_locks[order["document_no"]] = now + float(self.faults.lock_seconds)
            self.faults_served["lock_started"] += 1
            raise self._lock_error(order["document_no"], "random")
        api_locked = order["lock_id"] is not None and (order["lock_expires_at"] or 0) > now
        if api_locked and lock_id != order["lock_id"]:
            raise self._lock_error(order["document_no"], "api")

    def api_lock(self, order_id: int) -> int:
        with self.write() as c:
            order = self._order_row(c, order_id, status=404)
            self.check_locks(c, order)
            lock_id = secrets.randbelow(2**31 - 1) + 1
            c.execute(
                "UPDATE sop_orders SET lock_id = ?, is_editing = 1, lock_expires_at = ?,"
                " date_time_updated = ? WHERE id = ?",
                (lock_id, time.time() + API_LOCK_SECONDS, self.clock.stamp(), order_id),
            )
        return lock_id

    # --- helpers used by writes ------------------------------------------------------------------

    def _order_row(
        self, c: sqlite3.Connection, order_id: int, field: str = "id", status: int = 400
    ) -> sqlite3.Row:
        row = c.execute("SELECT * FROM sop_orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise SageError(f"{field}: no sales order with id {order_id}", field, status=status)
        return row

    def _adjust_holding(
        self,
        c: sqlite3.Connection,
        holding_id: int,
        now: str,
        d_confirmed: Decimal = Decimal(0),
        d_unconfirmed: Decimal = Decimal(0),
        d_alloc_sop: Decimal = Decimal(0),
    ) -> None:
        h = c.execute("SELECT * FROM warehouse_holdings WHERE id = ?", (holding_id,)).fetchone()
        q = holding_quantities(
            dec(h["confirmed_qty_in_stock"]) + d_confirmed,
            dec(h["unconfirmed_qty_in_stock"]) + d_unconfirmed,
            dec(h["quantity_reserved"]),
            dec(h["quantity_allocated_stock"]),
            dec(h["quantity_allocated_sop"]) + d_alloc_sop,
            dec(h["quantity_allocated_bom"]),
        )
        sets = ", ".join(f"{k} = ?" for k in q)
        c.execute(
            f"UPDATE warehouse_holdings SET {sets}, date_time_updated = ? WHERE id = ?",
            (*q.values(), now, holding_id),
        )
        free = sum(
            (
                dec(r[0])
                for r in c.execute(
                    "SELECT free_stock_available FROM warehouse_holdings WHERE product_id = ?",
                    (h["product_id"],),
                )
            ),
            Decimal(0),
        )
        c.execute(
            "UPDATE products SET free_stock_quantity = ?, date_time_updated = ? WHERE id = ?",
            (txt(free), now, h["product_id"]),
        )

    def _product_costing(self, c: sqlite3.Connection, product_id: int) -> sqlite3.Row:
        return c.execute(
            "SELECT p.*, g.costing_method, g.product_type FROM products p"
            " JOIN product_groups g ON g.id = p.product_group_id WHERE p.id = ?",
            (product_id,),
        ).fetchone()

    def _issue_cost(
        self, c: sqlite3.Connection, product: sqlite3.Row, holding_id: int, qty: Decimal
    ) -> Decimal:
        """Cost of taking `qty` out by the group's costing method; FIFO consumes layers oldest first."""
        method = product["costing_method"]
        if method == "Standard":
            return five(qty * dec(product["standard_cost"]))
        if method != "FIFO":
            return five(qty * dec(product["average_buying_price"]))
        total, left = Decimal(0), qty
        last_cost = dec(product["average_buying_price"])
        for layer in c.execute(
            "SELECT * FROM fifo_layers WHERE warehouse_holding_id = ?"
            " AND quantity_remaining COLLATE DECIMAL > '0' ORDER BY received, id",
            (holding_id,),
        ).fetchall():
            if left <= 0:
                break
            have, unit = dec(layer["quantity_remaining"]), dec(layer["unit_cost"])
            take = min(have, left)
            total += take * unit
            left -= take
            last_cost = unit
            c.execute(
                "UPDATE fifo_layers SET quantity_remaining = ? WHERE id = ?", (txt(have - take), layer["id"])
            )
        # beyond the layers (negative stock) the last known cost stands in
        total += left * last_cost
        return five(total)

    def _receipt_cost(
        self, c: sqlite3.Connection, product: sqlite3.Row, holding_id: int, qty: Decimal, when: str
    ) -> Decimal:
        unit = dec(
            product["standard_cost"]
            if product["costing_method"] == "Standard"
            else product["average_buying_price"]
        )
        if product["costing_method"] == "FIFO":
            c.execute(
                "INSERT INTO fifo_layers (warehouse_holding_id, received, quantity_remaining, unit_cost)"
                " VALUES (?, ?, ?, ?)",
                (holding_id, when, txt(qty), txt(unit)),
            )
        return unit

    def _movement(
        self,
        c: sqlite3.Connection,
        *,
        product: sqlite3.Row,
        holding_id: int,
        kind: str,
        when: str,
        source: int,
        source_ref: str,
        source_name: str,
        reference: str,
        second_reference: str,
        qty: Decimal,
        cost_value: Decimal,
        unit_issue: Decimal,
        now: str,
    ) -> None:
        wh = c.execute(
            "SELECT warehouse_name FROM warehouse_holdings WHERE id = ?", (holding_id,)
        ).fetchone()[0]
        # quantity, cost_value and issue_value carry the movement's sign: out is negative
        sign = -1 if qty < 0 else 1
        unit_cost = five(abs(cost_value) / abs(qty)) if qty else Decimal(0)
        cost_value = abs(cost_value) * sign
        c.execute(
            "INSERT INTO product_transactions (product_id, warehouse_holding_id, transaction_type,"
            " transaction_date,"
            " source_area_type_id, source_area_reference, source_area_name, reference, second_reference,"
            " warehouse_name, quantity, unit_cost_price, unit_issue_price, cost_value, issue_value,"
            " user_name,"
            " date_time_updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                product["id"],
                holding_id,
                kind,
                when,
                source,
                source_ref[:20],
                source_name[:20],
                reference[:20],
                second_reference[:20],
                wh,
                txt(qty),
                txt(unit_cost),
                txt(unit_issue),
                txt(cost_value),
                txt(money(abs(qty) * unit_issue) * sign),
                "sandbox",
                now,
            ),
        )

    def _next_number(self, key: str, width: int = 10) -> str:
        value = int(self.meta(key) or "1")
        self.set_meta(key, str(value + 1))
        return str(value).zfill(width)

    # --- despatch -------------------------------------------------------------------------------

    def confirm_despatch_list(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        fields: dict[str, Any] = {
            "confirmation_intent_type": "str",
            "trader_id": "int",
            "warehouse_id": "int",
            "document_no": "str",
            "document_date": "dt",
        }
        q = build_query(params, fields, "sop_confirm_despatch", '"sop_order_return_id", "id"')
        where = q.where
        if "confirmation_intent_type" not in params.get("$filter", ""):
            where = (
                f"({where}) AND confirmation_intent_type = 'ConfirmOnDespatch'"
                if where
                else "confirmation_intent_type = 'ConfirmOnDespatch'"
            )
        sql = "SELECT * FROM confirm_despatch_v" + (f" WHERE {where}" if where else "")
        sql += f" ORDER BY {q.order_by} LIMIT ? OFFSET ?"
        with self.lock:
            rows = self.db.execute(sql, (*q.params, q.top, q.skip)).fetchall()
        orders: dict[int, dict[str, Any]] = {}
        for r in rows:
            order = orders.setdefault(
                r["sop_order_return_id"],
                {
                    "sop_order_return_id": r["sop_order_return_id"],
                    "despatch_receipt_date": None,
                    "confirmation_intent_type": r["confirmation_intent_type"],
                    "items": [],
                    "tracking_items": [],
                },
            )
            order["items"].append(self._despatch_item(r, None))
        return list(orders.values())

    @staticmethod
    def _despatch_item(r: sqlite3.Row, quantity: Decimal | None) -> dict[str, Any]:
        line_qty, done = dec(r["line_quantity"]), dec(r["despatch_receipt_quantity"])
        return {
            "id": r["id"],
            "sop_order_return_id": r["sop_order_return_id"],
            "document_no": r["document_no"],
            "customer_id": r["trader_id"],
            "customer_reference": r["customer_reference"],
            "customer_name": r["customer_name"],
            "product_id": r["product_id"],
            "item_code": r["item_code"],
            "item_name": r["item_name"],
            "warehouse_name": r["warehouse_name"],
            "quantity": quantity if quantity is not None else dec(r["available_quantity"]),
            "line_quantity": line_qty,
            "despatch_receipt_quantity": done,
            "outstanding_quantity": line_qty - done,
            "available_quantity": dec(r["available_quantity"]),
            "product_type": r["product_type"],
            "document_date": r["document_date"],
            "unit_description": "Each",
            "selling_unit_description": "Each",
            "bin_items": [],
            "traceable_adjustment_items": [],
        }

    def confirm_despatch(self, body: ConfirmDespatch) -> dict[str, Any]:
        with self.write() as c:
            order = self._order_row(c, body.sop_order_return_id, "sop_order_return_id")
            no = order["document_no"]
            self.check_locks(c, order)
            refusals = {
                DOCUMENT_STATUS["OnHold"]: f"Sales order {no} is on hold and cannot be despatched.",
                DOCUMENT_STATUS[
                    "Cancelled"
                ]: f"Sales order {no} has been cancelled and cannot be despatched.",
                DOCUMENT_STATUS[
                    "Complete"
                ]: f"Sales order {no} is complete; there is nothing left to despatch.",
                DOCUMENT_STATUS["Draft"]: f"Sales order {no} is a draft and cannot be despatched.",
            }
            if order["document_status"] in refusals:
                raise SageError(refusals[order["document_status"]], "sop_order_return_id")
            now = self.clock.stamp()
            when = iso(body.despatch_receipt_date) if body.despatch_receipt_date else now
            update_stock = self.meta("update_stock_on_despatch") == "1"
            customer = c.execute(
                "SELECT reference FROM customers WHERE id = ?", (order["customer_id"],)
            ).fetchone()[0]
            despatch_no = self._next_number("next_despatch_no")
            track = body.tracking_items[0] if body.tracking_items else TrackingItem()
            cur = c.execute(
                "INSERT INTO sop_despatch_receipts (despatch_no, despatched_by, despatch_date, sop_order_id,"
                " courier_id, courier_name, consignment_no, weight, pieces, notes, date_time_created,"
                " date_time_updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    despatch_no,
                    "sandbox",
                    when,
                    order["id"],
                    track.courier_id,
                    order["delivery_method"][:60],
                    track.consignment_no,
                    txt(track.weight),
                    track.pieces,
                    track.notes,
                    now,
                    now,
                ),
            )
            despatch_id = cur.lastrowid
            seen: set[int] = set()
            echoed = []
            for i, item in enumerate(body.items):
                where = f"items[{i}]"
                if item.id in seen:
                    raise SageError(f"{where}.id: line {item.id} appears more than once", f"{where}.id")
                seen.add(item.id)
                line = c.execute("SELECT * FROM sop_order_lines WHERE id = ?", (item.id,)).fetchone()
                if line is None or line["sop_order_id"] != order["id"]:
                    raise SageError(
                        f"{where}.id: sales order {no} has no line with id {item.id}", f"{where}.id"
                    )
                if line["line_type"] not in (LINE_TYPES["Standard"], LINE_TYPES["FreeText"]):
                    kind = line["line_type"].removeprefix("EnumLineType").lower()
                    raise SageError(
                        f"{where}.id: line {item.id} is a {kind} line and cannot be despatched", f"{where}.id"
                    )
                qty_line, done = dec(line["line_quantity"]), dec(line["despatch_receipt_quantity"])
                allocated = dec(line["allocated_quantity"])
                outstanding = qty_line - done
                if item.quantity > outstanding:
                    raise SageError(
                        f"{where}.quantity: {item.quantity} is more than the {outstanding} outstanding "
                        f"on line {line['line_number']} ({line['code'] or line['description']})",
                        f"{where}.quantity",
                    )
                if item.quantity > allocated:
                    raise SageError(
                        f"{where}.quantity: {item.quantity} is more than the {allocated} allocated and "
                        f"available for despatch on line {line['line_number']} ({line['code']})",
                        f"{where}.quantity",
                    )
                new_done = done + item.quantity
                status = "Fully" if new_done == qty_line else "Partially"
                left_alloc = allocated - item.quantity
                c.execute(
                    "UPDATE sop_order_lines SET despatch_receipt_quantity = ?, allocated_quantity = ?,"
                    " despatch_receipt_status = ?, allocation_status = ?, is_complete = ?,"
                    " date_time_updated = ? WHERE id = ?",
                    (
                        txt(new_done),
                        txt(left_alloc),
                        status,
                        "None" if left_alloc == 0 else "Partially",
                        1 if new_done == qty_line else 0,
                        now,
                        line["id"],
                    ),
                )
                c.execute(
                    "INSERT INTO sop_despatch_lines (sop_despatch_id, sop_order_line_id, quantity,"
                    " date_time_updated) VALUES (?, ?, ?, ?)",
                    (despatch_id, line["id"], txt(item.quantity), now),
                )
                if line["counts_stock"]:
                    hid = line["warehouse_holding_id"]
                    product = self._product_costing(c, line["product_id"])
                    if update_stock:
                        h = c.execute(
                            "SELECT confirmed_qty_in_stock FROM warehouse_holdings WHERE id = ?", (hid,)
                        ).fetchone()
                        from_confirmed = min(item.quantity, max(Decimal(0), dec(h[0])))
                        self._adjust_holding(
                            c,
                            hid,
                            now,
                            d_confirmed=-from_confirmed,
                            d_unconfirmed=-(item.quantity - from_confirmed),
                            d_alloc_sop=-item.quantity,
                        )
                        cost = self._issue_cost(c, product, hid, item.quantity)
                        self._movement(
                            c,
                            product=product,
                            holding_id=hid,
                            kind="Goods Out",
                            when=when,
                            source=SOURCE_CUSTOMER,
                            source_ref=customer,
                            source_name="Customer",
                            reference=no,
                            second_reference=despatch_no,
                            qty=-item.quantity,
                            cost_value=cost,
                            unit_issue=dec(line["selling_unit_price"]),
                            now=now,
                        )
                    else:
                        self._adjust_holding(c, hid, now, d_alloc_sop=-item.quantity)
                echoed.append(item.quantity)
            self._refresh_order_status(c, order["id"], now)
            rows = c.execute(
                f"{_CONFIRM_ANY_SQL} WHERE l.id IN ({','.join('?' * len(body.items))})",
                [it.id for it in body.items],
            ).fetchall()
            by_id = {r["id"]: r for r in rows}
        return {
            "sop_order_return_id": order["id"],
            "despatch_receipt_date": when,
            "confirmation_intent_type": body.confirmation_intent_type or "ConfirmOnDespatch",
            "items": [self._despatch_item(by_id[it.id], q) for it, q in zip(body.items, echoed, strict=True)],
            "tracking_items": [
                t.model_dump(mode="python") | {"sop_order_return_id": order["id"]}
                for t in body.tracking_items
            ],
        }

    def _refresh_order_status(self, c: sqlite3.Connection, order_id: int, now: str) -> None:
        lines = c.execute(
            "SELECT line_type, line_quantity, despatch_receipt_quantity FROM sop_order_lines"
            " WHERE sop_order_id = ?",
            (order_id,),
        ).fetchall()
        goods = [ln for ln in lines if ln["line_type"] in (LINE_TYPES["Standard"], LINE_TYPES["FreeText"])]
        done = [dec(ln["despatch_receipt_quantity"]) for ln in goods]
        complete = bool(goods) and all(
            d == dec(ln["line_quantity"]) for d, ln in zip(done, goods, strict=True)
        )
        status = "Fully" if complete else ("Partially" if any(done) else "None")
        sets = "despatch_receipt_status = ?, date_time_updated = ?"
        args: list[Any] = [status, now]
        if complete:
            sets += ", document_status = ?"
            args.append(DOCUMENT_STATUS["Complete"])
            c.execute(
                "UPDATE sop_order_lines SET is_complete = 1, date_time_updated = ? WHERE sop_order_id = ?"
                " AND is_complete = 0",
                (now, order_id),
            )
        c.execute(f"UPDATE sop_orders SET {sets} WHERE id = ?", (*args, order_id))

    # --- orders ---------------------------------------------------------------------------------

    def _new_line(
        self,
        c: sqlite3.Connection,
        order_id: int,
        number: int,
        ln: OrderLineIn,
        where: str,
        allocate: bool,
        now: str,
    ) -> dict[str, Any]:
        lt = ln.line_type
        qty = Decimal(0) if lt == LINE_TYPES["Comment"] else ln.line_quantity
        if lt == LINE_TYPES["Comment"] and (ln.line_quantity or ln.selling_unit_price):
            raise SageError(
                f"{where}.line_quantity: a comment line carries no quantity or price",
                f"{where}.line_quantity",
            )
        row: dict[str, Any] = {
            "product_id": None,
            "warehouse_id": None,
            "warehouse_holding_id": None,
            "counts_stock": 0,
            "code": ln.code,
            "description": ln.description,
            "cost_price": "0",
            "intent": "ConfirmOnDespatch",
        }
        allocated = Decimal(0)
        if lt == LINE_TYPES["Standard"]:
            if ln.product_id is None:
                raise SageError(f"{where}.product_id: required on a standard line", f"{where}.product_id")
            if ln.warehouse_id is None:
                raise SageError(f"{where}.warehouse_id: required on a standard line", f"{where}.warehouse_id")
            if qty <= 0:
                raise SageError(f"{where}.line_quantity: must be greater than zero", f"{where}.line_quantity")
            product = self._product_costing(c, ln.product_id)
            if product is None:
                raise SageError(
                    f"{where}.product_id: no product with id {ln.product_id}", f"{where}.product_id"
                )
            wh = c.execute("SELECT name FROM warehouses WHERE id = ?", (ln.warehouse_id,)).fetchone()
            if wh is None:
                raise SageError(
                    f"{where}.warehouse_id: no warehouse with id {ln.warehouse_id}", f"{where}.warehouse_id"
                )
            h = c.execute(
                "SELECT * FROM warehouse_holdings WHERE product_id = ? AND warehouse_id = ?",
                (ln.product_id, ln.warehouse_id),
            ).fetchone()
            if h is None:
                raise SageError(
                    f"{where}.warehouse_id: product {product['code']} has no holding in warehouse {wh[0]}",
                    f"{where}.warehouse_id",
                )
            row.update(
                product_id=ln.product_id,
                warehouse_id=ln.warehouse_id,
                warehouse_holding_id=h["id"],
                code=product["code"],
                description=ln.description or product["name"],
                cost_price=product["standard_cost"]
                if product["costing_method"] == "Standard"
                else product["average_buying_price"],
            )
            if product["product_type"] == "EnumStockItemTypeServiceLabour":
                row["intent"] = "Confirm"
            if product["product_type"] == "EnumStockItemTypeStock":
                row["counts_stock"] = 1
                if allocate:
                    allocated = max(Decimal(0), min(qty, dec(h["free_stock_available"])))
                    if allocated:
                        self._adjust_holding(c, h["id"], now, d_alloc_sop=allocated)
            elif allocate:
                allocated = qty
        elif lt == LINE_TYPES["FreeText"]:
            if not ln.description:
                raise SageError(f"{where}.description: required on a free text line", f"{where}.description")
            allocated = qty if allocate else Decimal(0)
        elif lt == LINE_TYPES["Charge"]:
            row["code"] = ln.code or "CHARGE"
        total = money(qty * ln.selling_unit_price)
        tax = money(total * VAT_RATE)
        values = {
            "sop_order_id": order_id,
            "line_number": number,
            "line_type": lt,
            "product_id": row["product_id"],
            "warehouse_id": row["warehouse_id"],
            "warehouse_holding_id": row["warehouse_holding_id"],
            "counts_stock": row["counts_stock"],
            "code": row["code"],
            "description": row["description"],
            "line_quantity": txt(qty),
            "allocated_quantity": txt(allocated),
            "despatch_receipt_quantity": "0",
            "selling_unit_price": txt(ln.selling_unit_price),
            "cost_price": row["cost_price"],
            "line_total_value": txt(total),
            "line_tax_value": txt(tax),
            "tax_code_id": 1,
            "allocation_status": "Fully"
            if qty and allocated == qty
            else ("Partially" if allocated else "None"),
            "despatch_receipt_status": "None",
            "confirmation_intent_type": row["intent"],
            "show_on_customer_docs": int(ln.show_on_customer_docs),
            "date_time_created": now,
            "date_time_updated": now,
        }
        c.execute(
            f"INSERT INTO sop_order_lines ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()),
        )
        return values

    def create_order(self, body: OrderIn) -> dict[str, Any]:
        with self.write() as c:
            if c.execute("SELECT 1 FROM customers WHERE id = ?", (body.customer_id,)).fetchone() is None:
                raise SageError(f"customer_id: no customer with id {body.customer_id}", "customer_id")
            document_no = body.document_no or self._next_number("next_order_no")
            if c.execute("SELECT 1 FROM sop_orders WHERE document_no = ?", (document_no,)).fetchone():
                raise SageError(f"document_no: sales order {document_no} already exists", "document_no")
            now = self.clock.stamp()
            allocate = self.meta("allocate_stock_on_order_entry") == "1"
            cur = c.execute(
                "INSERT INTO sop_orders (document_no, customer_id, customer_document_no, document_date,"
                " document_status, subtotal_goods_value, subtotal_charge_net_value,"
                " subtotal_charge_tax_value,"
                " total_net_value, total_tax_value, total_gross_value, requested_delivery_date,"
                " promised_delivery_date, document_created_by, delivery_method, date_time_created,"
                " date_time_updated) VALUES (?,?,?,?,?,'0','0','0','0','0','0',?,?,?,?,?,?)",
                (
                    document_no,
                    body.customer_id,
                    body.customer_document_no,
                    iso(body.document_date) if body.document_date else now,
                    DOCUMENT_STATUS["Live"],
                    iso(body.requested_delivery_date) if body.requested_delivery_date else None,
                    iso(body.promised_delivery_date) if body.promised_delivery_date else None,
                    "sandbox",
                    body.analysis_code_1,
                    now,
                    now,
                ),
            )
            order_id = cur.lastrowid
            assert order_id is not None
            lines = [
                self._new_line(c, order_id, n, ln, f"lines[{n - 1}]", allocate, now)
                for n, ln in enumerate(body.lines, 1)
            ]
            totals = order_totals(lines)
            c.execute(
                f"UPDATE sop_orders SET {', '.join(f'{k} = ?' for k in totals)} WHERE id = ?",
                (*totals.values(), order_id),
            )
        return self.get(R.SOP_ORDER, order_id, {"$expand": "lines"})

    def update_order(self, order_id: int, body: OrderUpdate) -> dict[str, Any]:
        """PUT: header, then lines one by one; a failing line stops there, earlier ones stay (as Sage)."""
        with self.write() as c:
            order = self._order_row(c, order_id, status=404)
            self.check_locks(c, order, body.lock_id)
            now = self.clock.stamp()
            sets: dict[str, Any] = {}
            for name in ("customer_document_no", "requested_delivery_date", "promised_delivery_date"):
                value = getattr(body, name)
                if value is not None:
                    sets[name] = iso(value) if isinstance(value, datetime) else value
            if body.analysis_code_1 is not None:
                sets["delivery_method"] = body.analysis_code_1
            if body.is_editing is False and order["lock_id"] is not None and body.lock_id == order["lock_id"]:
                sets.update(lock_id=None, is_editing=0, lock_expires_at=None)
            sets["date_time_updated"] = now
            c.execute(
                f"UPDATE sop_orders SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                (*sets.values(), order_id),
            )
        for i, ln in enumerate(body.lines):
            with self.write() as c:
                self._update_line(c, order, ln, f"lines[{i}]", self.clock.stamp())
        return self.get(R.SOP_ORDER, order_id, {"$expand": "lines"})

    def _update_line(
        self, c: sqlite3.Connection, order: sqlite3.Row, ln: OrderLineUpdate, where: str, now: str
    ) -> None:
        if ln.id is None:
            raise SageError(
                f"{where}.id: adding lines with PUT is not supported by the simulator; give the line id",
                f"{where}.id",
            )
        line = c.execute(
            "SELECT * FROM sop_order_lines WHERE id = ? AND sop_order_id = ?", (ln.id, order["id"])
        ).fetchone()
        if line is None:
            raise SageError(
                f"{where}.id: sales order {order['document_no']} has no line with id {ln.id}", f"{where}.id"
            )
        if order["document_status"] in (DOCUMENT_STATUS["Complete"], DOCUMENT_STATUS["Cancelled"]):
            raise SageError(f"{where}: sales order {order['document_no']} can no longer be amended", where)
        qty, alloc, done = (
            dec(line["line_quantity"]),
            dec(line["allocated_quantity"]),
            dec(line["despatch_receipt_quantity"]),
        )
        if ln.is_to_delete:
            if done:
                raise SageError(
                    f"{where}.is_to_delete: line {ln.id} has been despatched and cannot be deleted",
                    f"{where}.is_to_delete",
                )
            if line["counts_stock"] and alloc:
                self._adjust_holding(c, line["warehouse_holding_id"], now, d_alloc_sop=-alloc)
            c.execute("DELETE FROM sop_order_lines WHERE id = ?", (ln.id,))
            self._retotal(c, order["id"], now)
            return
        if ln.line_quantity is not None:
            if ln.line_quantity < done:
                raise SageError(
                    f"{where}.line_quantity: {ln.line_quantity} is less than the {done} already despatched",
                    f"{where}.line_quantity",
                )
            qty = ln.line_quantity
            if alloc > qty - done:  # release what is no longer needed
                release = alloc - (qty - done)
                if line["counts_stock"]:
                    self._adjust_holding(c, line["warehouse_holding_id"], now, d_alloc_sop=-release)
                alloc -= release
        if ln.to_allocate_quantity is not None and ln.to_allocate_quantity > 0:
            if line["line_type"] != LINE_TYPES["Standard"]:
                raise SageError(
                    f"{where}.to_allocate_quantity: only standard lines are allocated",
                    f"{where}.to_allocate_quantity",
                )
            room = qty - done - alloc
            if ln.to_allocate_quantity > room:
                raise SageError(
                    f"{where}.to_allocate_quantity: {ln.to_allocate_quantity} is more than the {room} "
                    f"left to allocate",
                    f"{where}.to_allocate_quantity",
                )
            if line["counts_stock"]:
                free = dec(
                    c.execute(
                        "SELECT free_stock_available FROM warehouse_holdings WHERE id = ?",
                        (line["warehouse_holding_id"],),
                    ).fetchone()[0]
                )
                if ln.to_allocate_quantity > free:
                    raise SageError(
                        f"{where}.to_allocate_quantity: only {free} free stock available",
                        f"{where}.to_allocate_quantity",
                    )
                self._adjust_holding(
                    c, line["warehouse_holding_id"], now, d_alloc_sop=ln.to_allocate_quantity
                )
            alloc += ln.to_allocate_quantity
        total = money(qty * dec(line["selling_unit_price"]))
        c.execute(
            "UPDATE sop_order_lines SET line_quantity = ?, allocated_quantity = ?, allocation_status = ?,"
            " line_total_value = ?, line_tax_value = ?, date_time_updated = ? WHERE id = ?",
            (
                txt(qty),
                txt(alloc),
                "Fully" if qty - done and alloc == qty - done else ("Partially" if alloc else "None"),
                txt(total),
                txt(money(total * VAT_RATE)),
                now,
                ln.id,
            ),
        )
        self._retotal(c, order["id"], now)

    def _retotal(self, c: sqlite3.Connection, order_id: int, now: str) -> None:
        lines = [
            dict(r) for r in c.execute("SELECT * FROM sop_order_lines WHERE sop_order_id = ?", (order_id,))
        ]
        totals = order_totals(lines)
        c.execute(
            f"UPDATE sop_orders SET {', '.join(f'{k} = ?' for k in totals)}, date_time_updated = ?"
            " WHERE id = ?",
            (*totals.values(), now, order_id),
        )

    # --- returns --------------------------------------------------------------------------------

    def create_return(self, body: OrderIn) -> dict[str, Any]:
        """A return against a customer, booked in on entry; restocked lines put stock back at cost."""
        with self.write() as c:
            customer = c.execute(
                "SELECT reference FROM customers WHERE id = ?", (body.customer_id,)
            ).fetchone()
            if customer is None:
                raise SageError(f"customer_id: no customer with id {body.customer_id}", "customer_id")
            document_no = body.document_no or "RT" + self._next_number("next_return_no", 8)
            if c.execute("SELECT 1 FROM sop_returns WHERE document_no = ?", (document_no,)).fetchone():
                raise SageError(f"document_no: sales return {document_no} already exists", "document_no")
            now = self.clock.stamp()
            when = iso(body.document_date) if body.document_date else now
            cur = c.execute(
                "INSERT INTO sop_returns (document_no, customer_id, customer_document_no, document_date,"
                " document_status, total_net_value, total_tax_value, total_gross_value,"
                " date_time_created, date_time_updated) VALUES (?,?,?,?,?,'0','0','0',?,?)",
                (
                    document_no,
                    body.customer_id,
                    body.customer_document_no,
                    when,
                    DOCUMENT_STATUS["Complete"],
                    now,
                    now,
                ),
            )
            return_id = cur.lastrowid
            net = Decimal(0)
            for n, ln in enumerate(body.lines, 1):
                where = f"lines[{n - 1}]"
                if ln.line_type != LINE_TYPES["Standard"]:
                    raise SageError(
                        f"{where}.line_type: the simulator takes standard return lines only",
                        f"{where}.line_type",
                    )
                if ln.line_quantity <= 0:
                    raise SageError(
                        f"{where}.line_quantity: must be greater than zero", f"{where}.line_quantity"
                    )
                product = self._product_costing(c, ln.product_id) if ln.product_id is not None else None
                if product is None:
                    raise SageError(
                        f"{where}.product_id: no product with id {ln.product_id}", f"{where}.product_id"
                    )
                h = c.execute(
                    "SELECT id FROM warehouse_holdings WHERE product_id = ? AND warehouse_id = ?",
                    (ln.product_id, ln.warehouse_id),
                ).fetchone()
                if h is None:
                    raise SageError(
                        f"{where}.warehouse_id: product {product['code']} has no holding in warehouse "
                        f"{ln.warehouse_id}",
                        f"{where}.warehouse_id",
                    )
                total = money(ln.line_quantity * ln.selling_unit_price)
                net += total
                c.execute(
                    "INSERT INTO sop_return_lines (sop_return_id, line_number, line_type, product_id,"
                    " warehouse_id, code, description, line_quantity, selling_unit_price, line_total_value,"
                    " restock, despatch_receipt_quantity, date_time_created, date_time_updated)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        return_id,
                        n,
                        ln.line_type,
                        ln.product_id,
                        ln.warehouse_id,
                        product["code"],
                        ln.description or product["name"],
                        txt(ln.line_quantity),
                        txt(ln.selling_unit_price),
                        txt(total),
                        int(ln.restock),
                        txt(ln.line_quantity),
                        now,
                        now,
                    ),
                )
                if ln.restock and product["product_type"] == "EnumStockItemTypeStock":
                    unit = self._receipt_cost(c, product, h["id"], ln.line_quantity, when)
                    self._adjust_holding(c, h["id"], now, d_confirmed=ln.line_quantity)
                    self._movement(
                        c,
                        product=product,
                        holding_id=h["id"],
                        kind="Goods Returned",
                        when=when,
                        source=SOURCE_CUSTOMER,
                        source_ref=customer[0],
                        source_name="Customer",
                        reference=document_no,
                        second_reference="",
                        qty=ln.line_quantity,
                        cost_value=five(unit * ln.line_quantity),
                        unit_issue=ln.selling_unit_price,
                        now=now,
                    )
            tax = money(net * VAT_RATE)
            c.execute(
                "UPDATE sop_returns SET total_net_value = ?, total_tax_value = ?, total_gross_value = ?"
                " WHERE id = ?",
                (txt(net), txt(tax), txt(net + tax), return_id),
            )
        assert return_id is not None
        return self.get(R.SOP_RETURN, return_id, {"$expand": "lines"})

    # --- stocktakes -----------------------------------------------------------------------------

    def _warehouse(self, c: sqlite3.Connection, warehouse_id: int | None) -> sqlite3.Row:
        if warehouse_id is None:
            raise SageError("warehouse_id: required", "warehouse_id")
        row = c.execute("SELECT * FROM warehouses WHERE id = ?", (warehouse_id,)).fetchone()
        if row is None:
            raise SageError(f"warehouse_id: no warehouse with id {warehouse_id}", "warehouse_id")
        return row

    def stocktake_new_items(self, body: StocktakeIn) -> dict[str, Any]:
        with self.lock:
            wh = self._warehouse(self.db, body.warehouse_id)
            rows = self.db.execute(
                "SELECT h.id, h.quantity_in_stock, p.code, p.name, p.average_buying_price, g.id AS gid,"
                " g.code AS gcode,"
                " g.can_levels_go_negative FROM warehouse_holdings h JOIN products p ON p.id = h.product_id"
                " JOIN product_groups g ON g.id = p.product_group_id WHERE h.warehouse_id = ?"
                " AND g.product_type = 'EnumStockItemTypeStock' ORDER BY p.code",
                (wh["id"],),
            ).fetchall()
        items = [
            {
                "warehouse_holding_id": r["id"],
                "item_code": r["code"],
                "item_name": r["name"],
                "stock_unit_name": "Each",
                "traceable_type": "EnumTraceableTypeNone",
                "product_group_id": r["gid"],
                "product_group_code": r["gcode"],
                "allows_negative_stock": bool(r["can_levels_go_negative"]),
                "quantity_in_stock": money(dec(r["quantity_in_stock"])),
                "value_of_stock": money(dec(r["quantity_in_stock"]) * dec(r["average_buying_price"])),
                "average_buying_price": money(dec(r["average_buying_price"])),
                "is_selected": False,
            }
            for r in rows
        ]
        return {
            "warehouse_id": wh["id"],
            "warehouse_name": wh["name"],
            "stocktake_name": body.stocktake_name,
            "stocktake_type": body.stocktake_type,
            "stocktake_status": "Selecting Items",
            "stocktake_items": items,
            "failed_stocktake_items": [],
            "stocktake_count_sheet_items": [],
        }

    def create_stocktake(self, body: StocktakeIn) -> dict[str, Any]:
        with self.write() as c:
            wh = self._warehouse(c, body.warehouse_id)
            chosen: list[int] = []
            for i, item in enumerate(body.stocktake_items):
                if not item.is_selected:
                    continue
                where = f"stocktake_items[{i}]"
                if item.warehouse_holding_id is not None:
                    h = c.execute(
                        "SELECT id FROM warehouse_holdings WHERE id = ? AND warehouse_id = ?",
                        (item.warehouse_holding_id, wh["id"]),
                    ).fetchone()
                elif item.item_code is not None:
                    h = c.execute(
                        "SELECT h.id FROM warehouse_holdings h JOIN products p ON p.id = h.product_id"
                        " WHERE p.code = ? AND h.warehouse_id = ?",
                        (item.item_code, wh["id"]),
                    ).fetchone()
                else:
                    raise SageError(f"{where}: give warehouse_holding_id or item_code", where)
                if h is None:
                    raise SageError(
                        f"{where}: no such item in warehouse {wh['name']}", f"{where}.warehouse_holding_id"
                    )
                chosen.append(h["id"])
            if not chosen:
                raise SageError(
                    "stocktake_items: select at least one item (is_selected true)", "stocktake_items"
                )
            now = self.clock.stamp()
            cur = c.execute(
                "INSERT INTO stocktakes (stocktake_name, warehouse_id, stocktake_date, stocktake_type,"
                " stocktake_status, show_expected_quantities, date_time_created, date_time_updated)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    body.stocktake_name or f"Stocktake {wh['name']}",
                    wh["id"],
                    now,
                    body.stocktake_type,
                    ST_ENTER,
                    int(body.show_expected_quantities),
                    now,
                    now,
                ),
            )
            stocktake_id = cur.lastrowid
            c.executemany(
                "INSERT INTO stocktake_count_sheet_items (stocktake_id, warehouse_holding_id,"
                " recorded_quantity_in_stock, date_time_updated) SELECT ?, id, quantity_in_stock, ?"
                " FROM warehouse_holdings WHERE id = ?",
                [(stocktake_id, now, hid) for hid in chosen],
            )
        assert stocktake_id is not None
        return self.stocktake(stocktake_id)

    def stocktake(self, stocktake_id: int, field: str = "id", status: int = 404) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute(
                "SELECT s.*, w.name AS warehouse_name FROM stocktakes s JOIN warehouses w"
                " ON w.id = s.warehouse_id WHERE s.id = ?",
                (stocktake_id,),
            ).fetchone()
            if row is None:
                raise SageError(f"{field}: no stocktake with id {stocktake_id}", field, status=status)
            items = [
                self._count_item(r)
                for r in self.db.execute(
                    _COUNT_ITEM_SQL + " WHERE i.stocktake_id = ? ORDER BY p.code", (stocktake_id,)
                )
            ]
        out = R.STOCKTAKE.to_json(row)
        out.update(
            warehouse_name=row["warehouse_name"],
            can_modify_stocktake_type=False,
            stocktake_items=[],
            failed_stocktake_items=[],
            stocktake_count_sheet_items=items,
        )
        return out

    def count_sheet_item(self, item_id: int) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute(_COUNT_ITEM_SQL + " WHERE i.id = ?", (item_id,)).fetchone()
        if row is None:
            raise SageError(f"id: no stocktake count sheet item with id {item_id}", "id", status=404)
        return self._count_item(row)

    @staticmethod
    def _count_item(r: sqlite3.Row) -> dict[str, Any]:
        recorded, actual = dec(r["recorded_quantity_in_stock"]), dec(r["actual_quantity_in_stock"])
        entered = bool(r["actual_quantity_entered"])
        status = "Not Counted" if not entered else ("No Discrepancy" if actual == recorded else "Discrepancy")
        return {
            "id": r["id"],
            "stocktake_id": r["stocktake_id"],
            "bin_item_id": r["warehouse_holding_id"],
            "bin_name": "Unspecified",
            "item_code": r["code"],
            "item_name": r["name"],
            "stock_unit_name": "Each",
            "include_nos_on_count_sheets": False,
            "traceable_type": "EnumTraceableTypeNone",
            "costing_method_type": r["costing_method"],
            "standard_cost": dec(r["standard_cost"]),
            "average_buying_price": dec(r["average_buying_price"]),
            "recorded_quantity_in_stock": recorded,
            "has_negative_quantity_in_stock": recorded < 0,
            "quantity_on_pop_order": Decimal(0),
            "quantity_allocated": dec(r["quantity_allocated"]),
            "actual_quantity_entered": entered,
            "actual_quantity_in_stock": actual,
            "discrepancy_status": status,
            "discrepancy_narrative": r["discrepancy_narrative"],
            "allows_negative_stock": bool(r["can_levels_go_negative"]),
            "stocktake_trace_count_sheet_items": [],
            "date_time_updated": r["date_time_updated"],
        }

    def _stocktake_row(self, c: sqlite3.Connection, body: StocktakeIn) -> sqlite3.Row:
        if body.id is None:
            raise SageError("id: the stocktake id is required", "id")
        row = c.execute("SELECT * FROM stocktakes WHERE id = ?", (body.id,)).fetchone()
        if row is None:
            raise SageError(f"id: no stocktake with id {body.id}", "id")
        return row

    def stocktake_enter_values(self, body: StocktakeIn) -> dict[str, Any]:
        with self.lock:
            row = self._stocktake_row(self.db, body)
            if row["stocktake_status"] != ST_ENTER:
                raise SageError(
                    f"id: stocktake {body.id} is at '{row['stocktake_status']}', not '{ST_ENTER}'", "id"
                )
        return self.stocktake(row["id"])

    def update_count_item(self, item_id: int, body: CountSheetItemIn) -> dict[str, Any]:
        with self.write() as c:
            item = c.execute(
                "SELECT i.*, s.stocktake_status FROM stocktake_count_sheet_items i JOIN stocktakes s"
                " ON s.id = i.stocktake_id WHERE i.id = ?",
                (item_id,),
            ).fetchone()
            if item is None:
                raise SageError(f"id: no stocktake count sheet item with id {item_id}", "id", status=404)
            if item["stocktake_status"] not in (ST_ENTER, ST_APPROVE):
                raise SageError(
                    f"id: stocktake {item['stocktake_id']} is '{item['stocktake_status']}'; counts can "
                    f"no longer be entered",
                    "id",
                )
            sets: dict[str, Any] = {"date_time_updated": self.clock.stamp()}
            if body.actual_quantity_in_stock is not None:
                sets["actual_quantity_in_stock"] = txt(body.actual_quantity_in_stock)
                sets["actual_quantity_entered"] = 1
            if body.actual_quantity_entered is not None:
                sets["actual_quantity_entered"] = int(body.actual_quantity_entered)
            if body.discrepancy_narrative is not None:
                sets["discrepancy_narrative"] = body.discrepancy_narrative
            c.execute(
                f"UPDATE stocktake_count_sheet_items SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                (*sets.values(), item_id),
            )
            c.execute(
                "UPDATE stocktakes SET date_time_updated = ? WHERE id = ?",
                (sets["date_time_updated"], item["stocktake_id"]),
            )
        return self.count_sheet_item(item_id)

    def stocktake_view_adjustments(self, body: StocktakeIn) -> dict[str, Any]:
        with self.write() as c:
            row = self._stocktake_row(c, body)
            if row["stocktake_status"] not in (ST_ENTER, ST_APPROVE):
                raise SageError(f"id: stocktake {body.id} is '{row['stocktake_status']}'", "id")
            if row["stocktake_status"] == ST_ENTER:
                c.execute(
                    "UPDATE stocktakes SET stocktake_status = ?, date_time_updated = ? WHERE id = ?",
                    (ST_APPROVE, self.clock.stamp(), row["id"]),
                )
        result = self.stocktake(row["id"])
        result["stocktake_count_sheet_items"] = [
            i for i in result["stocktake_count_sheet_items"] if i["discrepancy_status"] == "Discrepancy"
        ]
        return result

    def stocktake_approve_complete(self, body: StocktakeIn) -> dict[str, Any]:
        """Adjust each counted holding by (actual - recorded at count time) and write costed movements."""
        with self.write() as c:
            row = self._stocktake_row(c, body)
            if row["stocktake_status"] != ST_APPROVE:
                raise SageError(
                    f"id: stocktake {body.id} is '{row['stocktake_status']}'; view adjustments first "
                    f"(it must be '{ST_APPROVE}')",
                    "id",
                )
            now = self.clock.stamp()
            items = c.execute(
                "SELECT i.*, h.product_id FROM stocktake_count_sheet_items i JOIN warehouse_holdings h"
                " ON h.id = i.warehouse_holding_id WHERE i.stocktake_id = ? AND"
                " i.actual_quantity_entered = 1",
                (row["id"],),
            ).fetchall()
            reference = f"STK{row['id']:06d}"
            for item in items:
                delta = dec(item["actual_quantity_in_stock"]) - dec(item["recorded_quantity_in_stock"])
                if delta == 0:
                    continue
                product = self._product_costing(c, item["product_id"])
                hid = item["warehouse_holding_id"]
                if delta > 0:
                    unit = self._receipt_cost(c, product, hid, delta, now)
                    cost = five(unit * delta)
                else:
                    cost = self._issue_cost(c, product, hid, -delta)
                self._adjust_holding(c, hid, now, d_confirmed=delta)
                self._movement(
                    c,
                    product=product,
                    holding_id=hid,
                    kind="Stock Take",
                    when=now,
                    source=SOURCE_INTERNAL,
                    source_ref="",
                    source_name="Stocktake",
                    reference=reference,
                    second_reference=row["stocktake_name"][:20],
                    qty=delta,
                    cost_value=cost if delta > 0 else -cost,
                    unit_issue=Decimal(0),
                    now=now,
                )
            c.execute(
                "UPDATE stocktakes SET stocktake_status = ?, nominal_narrative = ?, date_time_updated = ?"
                " WHERE id = ?",
                (ST_COMPLETE, body.nominal_narrative or row["nominal_narrative"], now, row["id"]),
            )
        return self.stocktake(row["id"])

    # --- desktop-user actions (admin) ------------------------------------------------------------

    def goods_in(self, body: GoodsIn) -> dict[str, Any]:
        """A goods receipt posted in the desktop (the API has no endpoint for it): stock in, costed."""
        with self.write() as c:
            pending = None
            if body.reference is not None:
                pending = c.execute(
                    "SELECT * FROM pending_receipts WHERE reference = ?", (body.reference,)
                ).fetchone()
            if pending is not None:
                sku, warehouse = pending["sku"], pending["warehouse"]
                qty, unit = dec(pending["quantity"]), dec(pending["unit_cost"])
            else:
                if (
                    body.sku is None
                    or body.warehouse is None
                    or body.quantity is None
                    or body.unit_cost is None
                ):
                    raise SageError(
                        "reference: no pending scenario receipt with that reference; give sku, "
                        "warehouse, quantity and unit_cost",
                        "reference",
                    )
                sku, warehouse, qty, unit = body.sku, body.warehouse, body.quantity, body.unit_cost
            h = c.execute(
                "SELECT h.id, h.product_id FROM warehouse_holdings h JOIN products p ON p.id = h.product_id"
                " WHERE p.code = ? AND h.warehouse_name = ?",
                (sku, warehouse),
            ).fetchone()
            if h is None:
                raise SageError(f"sku: no holding of {sku!r} in warehouse {warehouse!r}", "sku")
            product = self._product_costing(c, h["product_id"])
            if product["product_type"] != "EnumStockItemTypeStock":
                raise SageError(f"sku: {sku} is not a stock item", "sku")
            now = self.clock.stamp()
            if product["costing_method"] == "Average":
                in_stock = sum(
                    (
                        dec(r[0])
                        for r in c.execute(
                            "SELECT quantity_in_stock FROM warehouse_holdings WHERE product_id = ?",
                            (h["product_id"],),
                        )
                    ),
                    Decimal(0),
                )
                avg = dec(product["average_buying_price"])
                new_avg = five(
                    (avg * max(in_stock, Decimal(0)) + unit * qty) / (max(in_stock, Decimal(0)) + qty)
                )
                c.execute(
                    "UPDATE products SET average_buying_price = ?, date_time_updated = ? WHERE id = ?",
                    (txt(new_avg), now, h["product_id"]),
                )
            if product["costing_method"] == "FIFO":
                c.execute(
                    "INSERT INTO fifo_layers (warehouse_holding_id, received, quantity_remaining, unit_cost)"
                    " VALUES (?, ?, ?, ?)",
                    (h["id"], now, txt(qty), txt(unit)),
                )
            self._adjust_holding(c, h["id"], now, d_confirmed=qty)
            reference = body.reference or f"GRN{self._next_number('next_grn_no', 7)}"
            self._movement(
                c,
                product=product,
                holding_id=h["id"],
                kind="Goods In",
                when=now,
                source=SOURCE_SUPPLIER,
                source_ref="",
                source_name="Supplier",
                reference=reference,
                second_reference="",
                qty=qty,
                cost_value=five(qty * unit),
                unit_issue=Decimal(0),
                now=now,
            )
            c.execute("DELETE FROM pending_receipts WHERE reference = ?", (reference,))
        return {
            "reference": reference,
            "sku": sku,
            "warehouse": warehouse,
            "quantity": qty,
            "unit_cost": unit,
        }

    def set_order_status(self, document_no: str, status: str) -> dict[str, Any]:
        """A desktop user puts an order on hold, releases it, or cancels it (cancelling frees allocations)."""
        if status not in ("Live", "OnHold", "Cancelled"):
            raise SageError("status: must be Live, OnHold or Cancelled", "status")
        with self.write() as c:
            order = c.execute("SELECT * FROM sop_orders WHERE document_no = ?", (document_no,)).fetchone()
            if order is None:
                raise SageError(f"document_no: no sales order {document_no!r}", "document_no", status=404)
            if order["document_status"] in (DOCUMENT_STATUS["Complete"], DOCUMENT_STATUS["Cancelled"]):
                raise SageError(
                    f"status: sales order {document_no} is already "
                    f"{order['document_status'].removeprefix('EnumDocumentStatus').lower()}",
                    "status",
                )
            now = self.clock.stamp()
            if status == "Cancelled":
                for line in c.execute(
                    "SELECT * FROM sop_order_lines WHERE sop_order_id = ?", (order["id"],)
                ).fetchall():
                    alloc = dec(line["allocated_quantity"])
                    if line["counts_stock"] and alloc:
                        self._adjust_holding(c, line["warehouse_holding_id"], now, d_alloc_sop=-alloc)
                    c.execute(
                        "UPDATE sop_order_lines SET allocated_quantity = '0', allocation_status = 'None',"
                        " date_time_updated = ? WHERE id = ?",
                        (now, line["id"]),
                    )
            c.execute(
                "UPDATE sop_orders SET document_status = ?, cancelled_status = ?, date_time_updated = ?"
                " WHERE id = ?",
                (DOCUMENT_STATUS[status], "Fully" if status == "Cancelled" else "None", now, order["id"]),
            )
        return self.get(R.SOP_ORDER, order["id"], {"$expand": "lines"})

    # --- admin ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self.lock:
            counts = {
                t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in (
                    "product_groups",
                    "products",
                    "warehouses",
                    "warehouse_holdings",
                    "customers",
                    "sop_orders",
                    "sop_order_lines",
                    "sop_despatch_receipts",
                    "product_transactions",
                    "stocktakes",
                    "sop_returns",
                    "pending_receipts",
                )
            }
            by_status = dict(
                self.db.execute("SELECT document_status, COUNT(*) FROM sop_orders GROUP BY 1").fetchall()
            )
            return {
                "scenario": self.meta("scenario_name"),
                "counts": counts,
                "orders_by_status": by_status,
                "settings": {
                    k: self.meta(k) == "1"
                    for k in ("update_stock_on_despatch", "allocate_stock_on_order_entry")
                },
                "faults": self.faults.model_dump(mode="python"),
                "locks": self.locks(),
                "faults_served": dict(sorted(self.faults_served.items())),
                "drop_next_response": [r.model_dump() for r in self.drop_rules],
            }


_CONFIRM_ANY_SQL = "SELECT * FROM despatchable_lines_v l"

_COUNT_ITEM_SQL = """
    SELECT i.*, p.code, p.name, p.standard_cost, p.average_buying_price, g.costing_method,
           g.can_levels_go_negative, h.quantity_allocated
    FROM stocktake_count_sheet_items i JOIN warehouse_holdings h ON h.id = i.warehouse_holding_id
    JOIN products p ON p.id = h.product_id JOIN product_groups g ON g.id = p.product_group_id
"""


def _select(item: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    if fields is None:
        return item
    return {k: item[k] for k in fields if k in item}


__all__ = [
    "DropRule",
    "Faults",
    "GoodsIn",
    "ODataError",
    "OrderStatusIn",
    "Sage200",
    "SageError",
    "parse_body",
]
