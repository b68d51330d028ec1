"""The simulator's SQLite file: schema, exact-decimal helpers, the clock, and loading a scenario.

Column names are the Sage API field names, so an OData field maps straight onto a column.
Money and quantities are TEXT holding a plain decimal string; the `DECIMAL` collation compares
them as Decimal, which keeps `$filter` and `$orderby` exact.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from sage_wms_pipeline.scenario.model import Scenario

DB_FILE = "sage200.sqlite"
SITE_ID = "5c3f9d2e-1a7b-4e8c-9f60-2b4d8a1e7c35"
COMPANY_ID = 1
VAT_RATE = Decimal("0.20")
CENT = Decimal("0.01")
PLACES5 = Decimal("0.00001")

PRODUCT_TYPES = {
    "Stock": "EnumStockItemTypeStock",
    "ServiceLabour": "EnumStockItemTypeServiceLabour",
    "Miscellaneous": "EnumStockItemTypeMiscellaneous",
}
DOCUMENT_STATUS = {
    "Live": "EnumDocumentStatusLive",
    "OnHold": "EnumDocumentStatusOnHold",
    "Cancelled": "EnumDocumentStatusCancelled",
    "Draft": "EnumDocumentStatusDraft",
    "Complete": "EnumDocumentStatusComplete",
}
LINE_TYPES = {
    "Standard": "EnumLineTypeStandard",
    "FreeText": "EnumLineTypeFreeText",
    "Charge": "EnumLineTypeCharge",
    "Comment": "EnumLineTypeComment",
}
SOURCE_AREA_TYPES = {
    1: "EnumSourceAreaTypeSupplier",
    2: "EnumSourceAreaTypeCustomer",
    3: "EnumSourceAreaTypeInternal",
    4: "EnumSourceAreaTypeWriteOff",
    5: "EnumSourceAreaTypeOpeningBalance",
    6: "EnumSourceAreaTypeBOM",
}
SOURCE_SUPPLIER, SOURCE_CUSTOMER, SOURCE_INTERNAL, SOURCE_OPENING = 1, 2, 3, 5


def dec(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


def txt(value: Decimal | int) -> str:
    """Store form: a plain decimal string, never exponent notation."""
    return format(Decimal(value), "f")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def five(value: Decimal) -> Decimal:
    return value.quantize(PLACES5, rounding=ROUND_HALF_UP)


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class Clock:
    """Wall-clock UTC stamps in milliseconds that never repeat, so `date_time_updated gt X` misses nothing."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._lock = threading.Lock()

    def stamp(self) -> str:
        with self._lock:
            now_ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._last_ms = now_ms
        return iso(datetime.fromtimestamp(now_ms / 1000, tz=UTC))


def _decimal_collation(a: str, b: str) -> int:
    da, db = Decimal(a), Decimal(b)
    return (da > db) - (da < db)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.create_collation("DECIMAL", _decimal_collation)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE oauth_clients (client_id TEXT PRIMARY KEY, client_secret TEXT NOT NULL);
CREATE TABLE auth_codes (code TEXT PRIMARY KEY, client_id TEXT NOT NULL, reusable INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE refresh_tokens (token TEXT PRIMARY KEY, client_id TEXT NOT NULL, expires_at REAL NOT NULL,
    used_at REAL);
CREATE TABLE access_tokens (token TEXT PRIMARY KEY, client_id TEXT NOT NULL, expires_at REAL NOT NULL);

CREATE TABLE record_locks (document_no TEXT PRIMARY KEY, expires_at REAL NOT NULL, source TEXT NOT NULL);

CREATE TABLE nominal_codes (id INTEGER PRIMARY KEY, reference TEXT NOT NULL UNIQUE);

CREATE TABLE product_groups (
    id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, description TEXT NOT NULL,
    product_type TEXT NOT NULL, costing_method TEXT NOT NULL,
    can_levels_go_negative INTEGER NOT NULL, stock_nominal_code_id INTEGER, issue_nominal_code_id INTEGER,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);

CREATE TABLE products (
    id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT NOT NULL, description TEXT NOT NULL,
    barcode TEXT, allow_sales_order INTEGER NOT NULL DEFAULT 1,
    product_group_id INTEGER NOT NULL REFERENCES product_groups(id),
    product_status_type TEXT NOT NULL DEFAULT 'Active',
    standard_cost TEXT NOT NULL, average_buying_price TEXT NOT NULL, selling_price TEXT NOT NULL,
    free_stock_quantity TEXT NOT NULL DEFAULT '0',
    stock_nominal_code_id INTEGER, issue_nominal_code_id INTEGER,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);
CREATE INDEX products_updated ON products(date_time_updated);

CREATE TABLE warehouses (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL,
    warehouse_type TEXT NOT NULL DEFAULT 'EnumWarehouseTypeWarehouse',
        use_for_sales_trading INTEGER NOT NULL DEFAULT 1,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);

CREATE TABLE warehouse_holdings (
    id INTEGER PRIMARY KEY, warehouse_id INTEGER NOT NULL REFERENCES warehouses(id),
    product_id INTEGER NOT NULL REFERENCES products(id), warehouse_name TEXT NOT NULL,
    reorder_level TEXT NOT NULL DEFAULT '0', minimum_level TEXT NOT NULL DEFAULT '0',
    maximum_level TEXT NOT NULL DEFAULT '0',
    confirmed_qty_in_stock TEXT NOT NULL, unconfirmed_qty_in_stock TEXT NOT NULL,
    quantity_in_stock TEXT NOT NULL, quantity_reserved TEXT NOT NULL DEFAULT '0',
    quantity_in_stock_less_reserved TEXT NOT NULL, quantity_on_order TEXT NOT NULL DEFAULT '0',
    quantity_allocated_stock TEXT NOT NULL DEFAULT '0', quantity_allocated_sop TEXT NOT NULL DEFAULT '0',
    quantity_allocated_bom TEXT NOT NULL DEFAULT '0', quantity_allocated TEXT NOT NULL,
    free_stock_available TEXT NOT NULL, free_stock_available_less_reserved TEXT NOT NULL,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL,
    UNIQUE (product_id, warehouse_id));
CREATE INDEX holdings_updated ON warehouse_holdings(date_time_updated);
CREATE INDEX holdings_warehouse ON warehouse_holdings(warehouse_id);

CREATE TABLE fifo_layers (
    id INTEGER PRIMARY KEY, warehouse_holding_id INTEGER NOT NULL REFERENCES warehouse_holdings(id),
    received TEXT NOT NULL, quantity_remaining TEXT NOT NULL, unit_cost TEXT NOT NULL);
CREATE INDEX fifo_by_holding ON fifo_layers(warehouse_holding_id, received, id);

CREATE TABLE customers (
    id INTEGER PRIMARY KEY, reference TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    address_1 TEXT NOT NULL, city TEXT NOT NULL, postcode TEXT NOT NULL, country_code TEXT NOT NULL,
    email TEXT, date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);

CREATE TABLE sop_orders (
    id INTEGER PRIMARY KEY, document_no TEXT NOT NULL UNIQUE,
        customer_id INTEGER NOT NULL REFERENCES customers(id),
    customer_document_no TEXT NOT NULL DEFAULT '', document_date TEXT NOT NULL,
    document_status TEXT NOT NULL, despatch_receipt_status TEXT NOT NULL DEFAULT 'None',
    invoice_credit_status TEXT NOT NULL DEFAULT 'None', cancelled_status TEXT NOT NULL DEFAULT 'None',
    is_draft INTEGER NOT NULL DEFAULT 0, exchange_rate TEXT NOT NULL DEFAULT '1',
    subtotal_goods_value TEXT NOT NULL, subtotal_charge_net_value TEXT NOT NULL,
    subtotal_charge_tax_value TEXT NOT NULL, subtotal_discount_value TEXT NOT NULL DEFAULT '0',
    total_net_value TEXT NOT NULL, total_tax_value TEXT NOT NULL, total_gross_value TEXT NOT NULL,
    requested_delivery_date TEXT, promised_delivery_date TEXT, document_created_by TEXT NOT NULL,
    delivery_method TEXT NOT NULL DEFAULT '',
    lock_id INTEGER, is_editing INTEGER NOT NULL DEFAULT 0, lock_expires_at REAL,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);
CREATE INDEX orders_updated ON sop_orders(date_time_updated);
CREATE INDEX orders_customer ON sop_orders(customer_id);
CREATE INDEX orders_status ON sop_orders(document_status);

CREATE TABLE sop_order_lines (
    id INTEGER PRIMARY KEY, sop_order_id INTEGER NOT NULL REFERENCES sop_orders(id),
        line_number INTEGER NOT NULL,
    line_type TEXT NOT NULL, product_id INTEGER REFERENCES products(id),
        warehouse_id INTEGER REFERENCES warehouses(id),
    warehouse_holding_id INTEGER REFERENCES warehouse_holdings(id), counts_stock INTEGER NOT NULL,
    code TEXT NOT NULL, description TEXT NOT NULL,
    line_quantity TEXT NOT NULL, allocated_quantity TEXT NOT NULL, despatch_receipt_quantity TEXT NOT NULL,
    invoice_credit_quantity TEXT NOT NULL DEFAULT '0',
        posted_invoice_credit_quantity TEXT NOT NULL DEFAULT '0',
    selling_unit_price TEXT NOT NULL, unit_discount_percent TEXT NOT NULL DEFAULT '0',
    unit_discount_value TEXT NOT NULL DEFAULT '0', cost_price TEXT NOT NULL,
    line_total_value TEXT NOT NULL, line_tax_value TEXT NOT NULL, tax_code_id INTEGER NOT NULL,
    allocation_status TEXT NOT NULL, despatch_receipt_status TEXT NOT NULL,
    invoice_credit_status TEXT NOT NULL DEFAULT 'None', confirmation_intent_type TEXT NOT NULL,
    show_on_customer_docs INTEGER NOT NULL DEFAULT 1,
        show_on_picking_list_type TEXT NOT NULL DEFAULT 'Show',
    is_complete INTEGER NOT NULL DEFAULT 0,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);
CREATE INDEX lines_by_order ON sop_order_lines(sop_order_id, line_number);
CREATE INDEX lines_updated ON sop_order_lines(date_time_updated);

CREATE TABLE sop_despatch_receipts (
    id INTEGER PRIMARY KEY, despatch_no TEXT NOT NULL UNIQUE, despatched_by TEXT NOT NULL,
    despatch_date TEXT NOT NULL, sop_order_id INTEGER NOT NULL REFERENCES sop_orders(id),
    courier_id INTEGER, courier_name TEXT NOT NULL DEFAULT '', consignment_no TEXT NOT NULL DEFAULT '',
    weight TEXT NOT NULL DEFAULT '0', pieces INTEGER NOT NULL DEFAULT 0, notes TEXT NOT NULL DEFAULT '',
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);
CREATE INDEX despatch_updated ON sop_despatch_receipts(date_time_updated);

CREATE TABLE sop_despatch_lines (
    id INTEGER PRIMARY KEY, sop_despatch_id INTEGER NOT NULL REFERENCES sop_despatch_receipts(id),
    sop_order_line_id INTEGER NOT NULL REFERENCES sop_order_lines(id), quantity TEXT NOT NULL,
    date_time_updated TEXT NOT NULL);
CREATE INDEX despatch_lines_updated ON sop_despatch_lines(date_time_updated);

CREATE TABLE product_transactions (
    id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL REFERENCES products(id),
    warehouse_holding_id INTEGER NOT NULL REFERENCES warehouse_holdings(id),
    transaction_type TEXT NOT NULL, transaction_date TEXT NOT NULL, source_area_type_id INTEGER NOT NULL,
    source_area_reference TEXT NOT NULL, source_area_name TEXT NOT NULL, reference TEXT NOT NULL,
    second_reference TEXT NOT NULL, warehouse_name TEXT NOT NULL,
        bin_name TEXT NOT NULL DEFAULT 'Unspecified',
    quantity TEXT NOT NULL, unit_cost_price TEXT NOT NULL, unit_issue_price TEXT NOT NULL,
    cost_value TEXT NOT NULL, issue_value TEXT NOT NULL, memo TEXT NOT NULL DEFAULT '',
    user_name TEXT NOT NULL, date_time_updated TEXT NOT NULL);
CREATE INDEX transactions_updated ON product_transactions(date_time_updated);
CREATE INDEX transactions_product ON product_transactions(product_id);

CREATE TABLE stocktakes (
    id INTEGER PRIMARY KEY, stocktake_name TEXT NOT NULL,
        warehouse_id INTEGER NOT NULL REFERENCES warehouses(id),
    stocktake_date TEXT NOT NULL, stocktake_type TEXT NOT NULL, stocktake_status TEXT NOT NULL,
    show_expected_quantities INTEGER NOT NULL DEFAULT 1, nominal_narrative TEXT NOT NULL DEFAULT '',
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);

CREATE TABLE stocktake_count_sheet_items (
    id INTEGER PRIMARY KEY, stocktake_id INTEGER NOT NULL REFERENCES stocktakes(id),
    warehouse_holding_id INTEGER NOT NULL REFERENCES warehouse_holdings(id),
    recorded_quantity_in_stock TEXT NOT NULL, actual_quantity_entered INTEGER NOT NULL DEFAULT 0,
    actual_quantity_in_stock TEXT NOT NULL DEFAULT '0', discrepancy_narrative TEXT NOT NULL DEFAULT '',
    date_time_updated TEXT NOT NULL);
CREATE INDEX count_items_by_stocktake ON stocktake_count_sheet_items(stocktake_id);

CREATE TABLE pending_receipts (
    reference TEXT PRIMARY KEY, sku TEXT NOT NULL, warehouse TEXT NOT NULL, quantity TEXT NOT NULL,
    unit_cost TEXT NOT NULL, expected TEXT NOT NULL);

CREATE TABLE sop_returns (
    id INTEGER PRIMARY KEY, document_no TEXT NOT NULL UNIQUE,
        customer_id INTEGER NOT NULL REFERENCES customers(id),
    customer_document_no TEXT NOT NULL DEFAULT '', document_date TEXT NOT NULL,
        document_status TEXT NOT NULL,
    total_net_value TEXT NOT NULL, total_tax_value TEXT NOT NULL, total_gross_value TEXT NOT NULL,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);

CREATE TABLE sop_return_lines (
    id INTEGER PRIMARY KEY, sop_return_id INTEGER NOT NULL REFERENCES sop_returns(id),
        line_number INTEGER NOT NULL,
    line_type TEXT NOT NULL, product_id INTEGER REFERENCES products(id),
        warehouse_id INTEGER REFERENCES warehouses(id),
    code TEXT NOT NULL, description TEXT NOT NULL, line_quantity TEXT NOT NULL,
        selling_unit_price TEXT NOT NULL,
    line_total_value TEXT NOT NULL, restock INTEGER NOT NULL, despatch_receipt_quantity TEXT NOT NULL,
    date_time_created TEXT NOT NULL, date_time_updated TEXT NOT NULL);
CREATE INDEX return_lines_by_return ON sop_return_lines(sop_return_id);

CREATE VIEW sop_orders_v AS
    SELECT o.*, o.delivery_method AS analysis_code_1, c.reference AS customer_reference,
        c.name AS customer_name, c.address_1 AS c_address_1,
           c.city AS c_city, c.postcode AS c_postcode, c.country_code AS c_country_code, c.email AS c_email
    FROM sop_orders o JOIN customers c ON c.id = o.customer_id;

CREATE VIEW product_transaction_views AS
    SELECT t.*, p.code AS product_code, p.product_group_id AS product_group_id,
        g.code AS product_group_code,
           CASE WHEN CAST(t.quantity AS REAL) < 0 THEN 2 ELSE 1 END AS transaction_group_id,
           0 AS transaction_type_id
    FROM product_transactions t JOIN products p ON p.id = t.product_id
    JOIN product_groups g ON g.id = p.product_group_id;

CREATE VIEW sop_order_despatch_line_views AS
    SELECT dl.id AS sop_despatch_line_id, dl.quantity AS sop_despatch_line_quantity,
           0 AS sop_despatch_line_is_invoiced, d.id AS sop_despatch_id,
               d.despatch_no AS sop_despatch_document_no,
           d.despatch_date AS sop_despatch_date, d.despatched_by AS sop_despatch_user_name,
           l.id AS sop_order_line_id, l.line_type AS line_type, l.code AS sop_order_line_item_code,
           substr(l.description, 1, 60) AS sop_order_line_item_description,
           l.line_number AS sop_order_line_print_sequence_number,
               l.line_quantity AS sop_order_line_quantity,
           l.despatch_receipt_quantity AS sop_order_line_despatch_quantity, o.id AS sop_order_id,
           o.document_no AS sop_order_document_no, o.document_date AS sop_order_document_date,
           o.document_status AS sop_order_document_status_type,
           o.customer_document_no AS sop_order_customer_document_no, c.id AS customer_id,
           c.reference AS customer_reference, c.name AS customer_name, l.product_id AS product_id,
           p.code AS product_code, p.name AS product_name, l.warehouse_holding_id AS warehouse_holding_id,
           l.warehouse_id AS warehouse_id, w.name AS warehouse_name,
               d.courier_name AS sop_despatch_courier_name,
           d.consignment_no AS sop_despatch_consignment_no, d.pieces AS sop_despatch_pieces,
           d.weight AS sop_despatch_weight, d.notes AS sop_despatch_notes,
               dl.date_time_updated AS date_time_updated
    FROM sop_despatch_lines dl JOIN sop_despatch_receipts d ON d.id = dl.sop_despatch_id
    JOIN sop_order_lines l ON l.id = dl.sop_order_line_id JOIN sop_orders o ON o.id = l.sop_order_id
    JOIN customers c ON c.id = o.customer_id LEFT JOIN products p ON p.id = l.product_id
    LEFT JOIN warehouses w ON w.id = l.warehouse_id;

CREATE VIEW despatchable_lines_v AS
    SELECT l.id AS id, l.line_type AS line_type, l.is_complete AS is_complete,
           o.id AS sop_order_return_id, o.document_no AS document_no, o.document_date AS document_date,
           o.document_status AS document_status, o.customer_id AS trader_id,
               c.reference AS customer_reference,
           c.name AS customer_name, l.product_id AS product_id, l.code AS item_code,
           substr(l.description, 1, 60) AS item_name, l.warehouse_id AS warehouse_id,
           COALESCE(w.name, '') AS warehouse_name, l.confirmation_intent_type AS confirmation_intent_type,
           l.line_quantity AS line_quantity, l.despatch_receipt_quantity AS despatch_receipt_quantity,
           l.allocated_quantity AS available_quantity, COALESCE(g.product_type, '') AS product_type,
           o.requested_delivery_date AS requested_delivery_date,
               o.promised_delivery_date AS promised_delivery_date
    FROM sop_order_lines l JOIN sop_orders o ON o.id = l.sop_order_id JOIN customers c ON c.id = o.customer_id
    LEFT JOIN warehouses w ON w.id = l.warehouse_id LEFT JOIN products p ON p.id = l.product_id
    LEFT JOIN product_groups g ON g.id = p.product_group_id;

CREATE VIEW confirm_despatch_v AS
    SELECT * FROM despatchable_lines_v
    WHERE document_status = 'EnumDocumentStatusLive'
      AND line_type IN ('EnumLineTypeStandard', 'EnumLineTypeFreeText')
      AND is_complete = 0 AND available_quantity COLLATE DECIMAL > '0';
"""


class ScenarioLoadError(ValueError):
    """A scenario that is valid JSON but does not hang together; names the record and field."""


def holding_quantities(
    confirmed: Decimal,
    unconfirmed: Decimal,
    reserved: Decimal,
    alloc_stock: Decimal,
    alloc_sop: Decimal,
    alloc_bom: Decimal,
) -> dict[str, str]:
    """Every derived quantity of a holding, from its independent ones (Sage's documented formulas)."""
    in_stock = confirmed + unconfirmed
    allocated = alloc_stock + alloc_sop + alloc_bom
    return {
        "confirmed_qty_in_stock": txt(confirmed),
        "unconfirmed_qty_in_stock": txt(unconfirmed),
        "quantity_in_stock": txt(in_stock),
        "quantity_reserved": txt(reserved),
        "quantity_in_stock_less_reserved": txt(in_stock - reserved),
        "quantity_allocated_stock": txt(alloc_stock),
        "quantity_allocated_sop": txt(alloc_sop),
        "quantity_allocated_bom": txt(alloc_bom),
        "quantity_allocated": txt(allocated),
        "free_stock_available": txt(in_stock - allocated),
        "free_stock_available_less_reserved": txt(in_stock - allocated - reserved),
    }


def order_totals(lines: list[dict[str, Any]]) -> dict[str, str]:
    goods = sum(
        (dec(ln["line_total_value"]) for ln in lines if ln["line_type"] != LINE_TYPES["Charge"]), Decimal(0)
    )
    charges = sum(
        (dec(ln["line_total_value"]) for ln in lines if ln["line_type"] == LINE_TYPES["Charge"]), Decimal(0)
    )
    goods_tax = sum(
        (dec(ln["line_tax_value"]) for ln in lines if ln["line_type"] != LINE_TYPES["Charge"]), Decimal(0)
    )
    charge_tax = sum(
        (dec(ln["line_tax_value"]) for ln in lines if ln["line_type"] == LINE_TYPES["Charge"]), Decimal(0)
    )
    return {
        "subtotal_goods_value": txt(goods),
        "subtotal_charge_net_value": txt(charges),
        "subtotal_charge_tax_value": txt(charge_tax),
        "total_net_value": txt(goods + charges),
        "total_tax_value": txt(goods_tax + charge_tax),
        "total_gross_value": txt(goods + charges + goods_tax + charge_tax),
    }


def _check_references(sc: Scenario) -> None:
    """Cross-record checks the pydantic model cannot make; each error names record and field."""
    groups = {g.code for g in sc.product_groups}
    skus = {p.sku for p in sc.products}
    whs = {w.sage_name for w in sc.warehouses}
    accounts = {c.account for c in sc.customers}

    def dupes(values: list[str], where: str) -> None:
        seen: set[str] = set()
        for i, v in enumerate(values):
            if v in seen:
                raise ScenarioLoadError(f"{where}[{i}]: duplicate {v!r}")
            seen.add(v)

    dupes([g.code for g in sc.product_groups], "product_groups")
    dupes([p.sku for p in sc.products], "products")
    dupes([w.sage_name for w in sc.warehouses], "warehouses")
    dupes([c.account for c in sc.customers], "customers")
    dupes([o.document_no for o in sc.orders], "orders")
    for i, p in enumerate(sc.products):
        if p.group not in groups:
            raise ScenarioLoadError(f"products[{i}].group: unknown product group {p.group!r}")
    seen_pairs: set[tuple[str, str]] = set()
    for i, s in enumerate(sc.opening_stock):
        if s.sku not in skus:
            raise ScenarioLoadError(f"opening_stock[{i}].sku: unknown product {s.sku!r}")
        if s.warehouse not in whs:
            raise ScenarioLoadError(f"opening_stock[{i}].warehouse: unknown warehouse {s.warehouse!r}")
        if (s.sku, s.warehouse) in seen_pairs:
            raise ScenarioLoadError(f"opening_stock[{i}]: duplicate {s.sku!r} in {s.warehouse!r}")
        seen_pairs.add((s.sku, s.warehouse))
        layered = sum((layer.quantity for layer in s.fifo_layers), Decimal(0))
        if layered > s.sage_confirmed + s.sage_unconfirmed:
            raise ScenarioLoadError(
                f"opening_stock[{i}].fifo_layers: layers hold {layered}, more than the "
                f"{s.sage_confirmed + s.sage_unconfirmed} in stock"
            )
    for i, o in enumerate(sc.orders):
        if o.customer not in accounts:
            raise ScenarioLoadError(f"orders[{i}].customer: unknown customer {o.customer!r}")
        for j, ln in enumerate(o.lines):
            if ln.line_type == "Standard":
                if ln.sku not in skus:
                    raise ScenarioLoadError(f"orders[{i}].lines[{j}].sku: unknown product {ln.sku!r}")
                if ln.warehouse not in whs:
                    raise ScenarioLoadError(
                        f"orders[{i}].lines[{j}].warehouse: unknown warehouse {ln.warehouse!r}"
                    )
    for i, r in enumerate(sc.receipts):
        if r.sku not in skus:
            raise ScenarioLoadError(f"receipts[{i}].sku: unknown product {r.sku!r}")
        if r.warehouse not in whs:
            raise ScenarioLoadError(f"receipts[{i}].warehouse: unknown warehouse {r.warehouse!r}")


def build_database(path: Path, sc: Scenario, clock: Clock) -> None:
    """Write a fresh database for `sc` at `path`, atomically: a failure leaves the old file untouched."""
    _check_references(sc)
    tmp = path.with_name(path.name + ".loading")
    for leftover in (tmp, Path(str(tmp) + "-journal")):
        leftover.unlink(missing_ok=True)
    conn = connect(tmp)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")  # holdings are written last, after what refers to them
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")
        _ScenarioLoader(conn, sc, clock).load()
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)


class _ScenarioLoader:
    """Maps the scenario onto Sage's records in one transaction, with bulk inserts."""

    def __init__(self, conn: sqlite3.Connection, sc: Scenario, clock: Clock) -> None:
        self.conn, self.sc, self.now = conn, sc, clock.stamp()
        self.txns: list[tuple[Any, ...]] = []

    def load(self) -> None:
        sc, now, c = self.sc, self.now, self.conn
        meta = {
            "company_name": sc.sage.company_name,
            "site_name": sc.sage.site_name,
            "scenario_name": sc.name,
            "update_stock_on_despatch": "1" if sc.sage.update_stock_on_despatch else "0",
            "allocate_stock_on_order_entry": "1" if sc.sage.allocate_stock_on_order_entry else "0",
            "next_despatch_no": "1",
            "next_order_no": str(len(sc.orders) + 1),
            "next_return_no": "1",
            "settings_updated": now,
        }
        c.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        c.execute("INSERT INTO oauth_clients VALUES ('sandbox', 'sandbox')")
        c.execute("INSERT INTO auth_codes VALUES ('sandbox-code', 'sandbox', 1, 0)")
        c.execute(
            "INSERT INTO refresh_tokens VALUES ('sandbox-refresh', 'sandbox', ?, NULL)",
            (time.time() + 90 * 86400,),
        )

        nominal: dict[str, int] = {}
        for g in sc.product_groups:
            for ref in (g.stock_nominal_code, g.issue_nominal_code):
                nominal.setdefault(ref, len(nominal) + 1)
        c.executemany("INSERT INTO nominal_codes VALUES (?, ?)", [(i, r) for r, i in nominal.items()])

        self.group_ids = {g.code: i for i, g in enumerate(sc.product_groups, 1)}
        c.executemany(
            "INSERT INTO product_groups VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    i,
                    g.code,
                    g.name[:50],
                    PRODUCT_TYPES[g.product_type],
                    g.costing_method,
                    0 if g.costing_method == "Average" else 1,
                    nominal[g.stock_nominal_code],
                    nominal[g.issue_nominal_code],
                    now,
                    now,
                )
                for i, g in enumerate(sc.product_groups, 1)
            ],
        )
        groups = {g.code: g for g in sc.product_groups}
        self.product_ids = {p.sku: i for i, p in enumerate(sc.products, 1)}
        self.products = {p.sku: p for p in sc.products}
        self.method = {p.sku: groups[p.group].costing_method for p in sc.products}
        self.is_stock = {p.sku: groups[p.group].product_type == "Stock" for p in sc.products}
        self.product_type = {p.sku: groups[p.group].product_type for p in sc.products}
        c.executemany(
            "INSERT INTO products (id, code, name, description, barcode, product_group_id, standard_cost,"
            " average_buying_price, selling_price, stock_nominal_code_id, issue_nominal_code_id,"
            " date_time_created, date_time_updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    i,
                    p.sku,
                    p.name,
                    p.name,
                    p.barcode,
                    self.group_ids[p.group],
                    txt(p.unit_cost),
                    txt(p.unit_cost),
                    txt(p.selling_price),
                    nominal[groups[p.group].stock_nominal_code],
                    nominal[groups[p.group].issue_nominal_code],
                    now,
                    now,
                )
                for i, p in enumerate(sc.products, 1)
            ],
        )
        self.warehouse_ids = {w.sage_name: i for i, w in enumerate(sc.warehouses, 1)}
        c.executemany(
            "INSERT INTO warehouses (id, name, description, date_time_created, date_time_updated)"
            " VALUES (?,?,?,?,?)",
            [(i, w.sage_name, w.wms_name[:50], now, now) for i, w in enumerate(sc.warehouses, 1)],
        )
        self.load_stock()
        self.customer_ids = {cu.account: i for i, cu in enumerate(sc.customers, 1)}
        c.executemany(
            "INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (i, cu.account, cu.name, cu.address_1, cu.town, cu.postcode, cu.country, cu.email, now, now)
                for i, cu in enumerate(sc.customers, 1)
            ],
        )
        self.load_orders()
        self.write_holdings()
        c.executemany(
            "INSERT INTO product_transactions (product_id, warehouse_holding_id, transaction_type,"
            " transaction_date, source_area_type_id, source_area_reference, source_area_name, reference,"
            " second_reference, warehouse_name, quantity, unit_cost_price, unit_issue_price, cost_value,"
            " issue_value, user_name, date_time_updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            self.txns,
        )

    def holding(self, sku: str, warehouse: str) -> dict[str, Any]:
        key = (sku, warehouse)
        h = self.holdings.get(key)
        if h is None:
            h = {
                "id": len(self.holdings) + 1,
                "confirmed": Decimal(0),
                "unconfirmed": Decimal(0),
                "alloc": Decimal(0),
            }
            self.holdings[key] = h
        return h

    def movement(
        self,
        sku: str,
        warehouse: str,
        kind: str,
        when: str,
        source: int,
        source_ref: str,
        source_name: str,
        reference: str,
        qty: Decimal,
        unit_cost: Decimal,
    ) -> None:
        h = self.holding(sku, warehouse)
        self.txns.append(
            (
                self.product_ids[sku],
                h["id"],
                kind,
                when,
                source,
                source_ref[:20],
                source_name[:20],
                reference[:20],
                "",
                warehouse,
                txt(qty),
                txt(unit_cost),
                "0",
                txt(five(qty * unit_cost)),
                "0",
                "sandbox",
                self.now,
            )
        )

    def load_stock(self) -> None:
        sc = self.sc
        self.holdings: dict[tuple[str, str], dict[str, Any]] = {}
        layers: list[tuple[int, str, str, str]] = []
        start = iso(sc.starts_at)
        for s in sc.opening_stock:
            h = self.holding(s.sku, s.warehouse)
            h["confirmed"] += s.sage_confirmed
            h["unconfirmed"] += s.sage_unconfirmed
            total = s.sage_confirmed + s.sage_unconfirmed
            cost = self.products[s.sku].unit_cost
            if not self.is_stock[s.sku] or total == 0:
                continue
            if self.method[s.sku] == "FIFO":
                pieces = [(layer.quantity, layer.unit_cost, iso(layer.received)) for layer in s.fifo_layers]
                rest = total - sum((p[0] for p in pieces), Decimal(0))
                if rest > 0:
                    pieces.append((rest, cost, start))
                for qty, unit, when in pieces:
                    layers.append((h["id"], when, txt(qty), txt(unit)))
                    self.movement(
                        s.sku,
                        s.warehouse,
                        "Opening Balance",
                        when,
                        SOURCE_OPENING,
                        "",
                        "Opening balance",
                        "O/BAL",
                        qty,
                        unit,
                    )
            else:
                self.movement(
                    s.sku,
                    s.warehouse,
                    "Opening Balance",
                    start,
                    SOURCE_OPENING,
                    "",
                    "Opening balance",
                    "O/BAL",
                    total,
                    cost,
                )
        avg_updates: dict[str, Decimal] = {}
        pending: list[tuple[str, ...]] = []
        sku_qty: dict[str, Decimal] = defaultdict(Decimal)
        for r in sc.receipts:
            if not r.posted_to_sage:
                # not in Sage yet; kept so a desktop user can post it later (POST /_sandbox/goods_in)
                pending.append(
                    (r.reference, r.sku, r.warehouse, txt(r.quantity), txt(r.unit_cost), iso(r.expected))
                )
                continue
            h = self.holding(r.sku, r.warehouse)
            if self.is_stock[r.sku] and self.method[r.sku] == "Average":
                if not sku_qty:
                    for (sku, _), hh in self.holdings.items():
                        sku_qty[sku] += hh["confirmed"] + hh["unconfirmed"]
                qty_before = sku_qty[r.sku]
                avg = avg_updates.get(r.sku, self.products[r.sku].unit_cost)
                avg_updates[r.sku] = five(
                    (avg * qty_before + r.unit_cost * r.quantity) / (qty_before + r.quantity)
                )
                sku_qty[r.sku] += r.quantity
            h["confirmed"] += r.quantity
            when = iso(r.expected)
            if self.is_stock[r.sku]:
                if self.method[r.sku] == "FIFO":
                    layers.append((h["id"], when, txt(r.quantity), txt(r.unit_cost)))
                self.movement(
                    r.sku,
                    r.warehouse,
                    "Goods In",
                    when,
                    SOURCE_SUPPLIER,
                    "",
                    "Supplier",
                    r.reference,
                    r.quantity,
                    r.unit_cost,
                )
        self.conn.executemany(
            "INSERT INTO fifo_layers (warehouse_holding_id, received, quantity_remaining, unit_cost)"
            " VALUES (?,?,?,?)",
            layers,
        )
        self.conn.executemany(
            "UPDATE products SET average_buying_price = ? WHERE code = ?",
            [(txt(v), sku) for sku, v in avg_updates.items()],
        )
        self.conn.executemany("INSERT OR REPLACE INTO pending_receipts VALUES (?,?,?,?,?,?)", pending)

    def load_orders(self) -> None:
        sc, now = self.sc, self.now
        allocate = sc.sage.allocate_stock_on_order_entry
        order_rows: list[tuple[Any, ...]] = []
        line_rows: list[tuple[Any, ...]] = []
        line_id = 0
        for oid, o in enumerate(sc.orders, 1):
            status = DOCUMENT_STATUS[o.status]
            lines: list[dict[str, Any]] = []
            for n, ln in enumerate(o.lines, 1):
                line_id += 1
                row = self.order_line(line_id, oid, n, ln, allocate and o.status == "Live")
                lines.append(row)
                line_rows.append(tuple(row.values()))
            totals = order_totals(lines)
            when = iso(o.document_date)
            order_rows.append(
                (
                    oid,
                    o.document_no,
                    self.customer_ids[o.customer],
                    when,
                    status,
                    1 if o.status == "Draft" else 0,
                    totals["subtotal_goods_value"],
                    totals["subtotal_charge_net_value"],
                    totals["subtotal_charge_tax_value"],
                    totals["total_net_value"],
                    totals["total_tax_value"],
                    totals["total_gross_value"],
                    "sandbox",
                    o.courier_service,
                    when,
                    now,
                )
            )
        self.conn.executemany(
            "INSERT INTO sop_orders (id, document_no, customer_id, document_date, document_status, is_draft,"
            " subtotal_goods_value, subtotal_charge_net_value, subtotal_charge_tax_value, total_net_value,"
            " total_tax_value, total_gross_value, document_created_by, delivery_method, date_time_created,"
            " date_time_updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            order_rows,
        )
        if line_rows:
            cols = ", ".join(self._line_columns)
            marks = ", ".join("?" * len(self._line_columns))
            self.conn.executemany(f"INSERT INTO sop_order_lines ({cols}) VALUES ({marks})", line_rows)

    _line_columns = (
        "id",
        "sop_order_id",
        "line_number",
        "line_type",
        "product_id",
        "warehouse_id",
        "warehouse_holding_id",
        "counts_stock",
        "code",
        "description",
        "line_quantity",
        "allocated_quantity",
        "despatch_receipt_quantity",
        "selling_unit_price",
        "cost_price",
        "line_total_value",
        "line_tax_value",
        "tax_code_id",
        "allocation_status",
        "despatch_receipt_status",
        "confirmation_intent_type",
        "show_on_customer_docs",
        "show_on_picking_list_type",
        "date_time_created",
        "date_time_updated",
    )

    def order_line(self, line_id: int, order_id: int, number: int, ln: Any, allocate: bool) -> dict[str, Any]:
        qty = ln.quantity if ln.line_type != "Comment" else Decimal(0)
        total = money(qty * ln.unit_price)
        tax = money(total * VAT_RATE) if ln.line_type != "Comment" else Decimal(0)
        product_id = warehouse_id = holding_id = None
        counts_stock = 0
        code, description, cost = "", ln.description, Decimal(0)
        allocated = Decimal(0)
        intent = "ConfirmOnDespatch"
        if ln.line_type == "Standard":
            product = self.products[ln.sku]
            product_id, warehouse_id = self.product_ids[ln.sku], self.warehouse_ids[ln.warehouse]
            h = self.holding(ln.sku, ln.warehouse)
            holding_id = h["id"]
            code, description, cost = ln.sku, ln.description or product.name, product.unit_cost
            if self.product_type[ln.sku] == "ServiceLabour":
                intent = "Confirm"
            if self.is_stock[ln.sku]:
                counts_stock = 1
                if allocate:
                    free = h["confirmed"] + h["unconfirmed"] - h["alloc"]
                    allocated = max(Decimal(0), min(qty, free))
                    h["alloc"] += allocated
            elif allocate:
                allocated = qty  # nothing to count: non-stock lines are always available
        elif ln.line_type == "FreeText" and allocate:
            allocated = qty
        elif ln.line_type == "Charge":
            code = "CHARGE"
        status = "Fully" if qty and allocated == qty else ("Partially" if allocated else "None")
        return {
            "id": line_id,
            "sop_order_id": order_id,
            "line_number": number,
            "line_type": LINE_TYPES[ln.line_type],
            "product_id": product_id,
            "warehouse_id": warehouse_id,
            "warehouse_holding_id": holding_id,
            "counts_stock": counts_stock,
            "code": code,
            "description": description,
            "line_quantity": txt(qty),
            "allocated_quantity": txt(allocated),
            "despatch_receipt_quantity": "0",
            "selling_unit_price": txt(ln.unit_price),
            "cost_price": txt(cost),
            "line_total_value": txt(total),
            "line_tax_value": txt(tax),
            "tax_code_id": 1,
            "allocation_status": status,
            "despatch_receipt_status": "None",
            "confirmation_intent_type": intent,
            "show_on_customer_docs": 1,
            "show_on_picking_list_type": "Show",
            "date_time_created": self.now,
            "date_time_updated": self.now,
        }

    def write_holdings(self) -> None:
        wh_names = {i: n for n, i in self.warehouse_ids.items()}
        rows = []
        free_by_product: dict[int, Decimal] = defaultdict(Decimal)
        for (sku, warehouse), h in self.holdings.items():
            q = holding_quantities(
                h["confirmed"], h["unconfirmed"], Decimal(0), Decimal(0), h["alloc"], Decimal(0)
            )
            pid, wid = self.product_ids[sku], self.warehouse_ids[warehouse]
            free_by_product[pid] += dec(q["free_stock_available"])
            rows.append((h["id"], wid, pid, wh_names[wid], *q.values(), self.now, self.now))
        self.conn.executemany(
            "INSERT INTO warehouse_holdings (id, warehouse_id, product_id, warehouse_name,"
            " confirmed_qty_in_stock, unconfirmed_qty_in_stock, quantity_in_stock, quantity_reserved,"
            " quantity_in_stock_less_reserved, quantity_allocated_stock, quantity_allocated_sop,"
            " quantity_allocated_bom, quantity_allocated,"
            " free_stock_available, free_stock_available_less_reserved, date_time_created, date_time_updated)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        self.conn.executemany(
            "UPDATE products SET free_stock_quantity = ? WHERE id = ?",
            [(txt(v), pid) for pid, v in free_by_product.items()],
        )
