"""SQLite schema of the Mintsoft simulator.

Quantities are whole WMS units (INTEGER); prices are Decimal stored as TEXT so no value ever
passes through binary float. Times are integer milliseconds of simulated warehouse time (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.types import TypeDecorator


class DecimalText(TypeDecorator[Decimal]):
    """Exact decimal kept as its string form; SQLite's NUMERIC would round through float."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(value)


metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("username", String, primary_key=True),
    Column("password", String, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key", String, primary_key=True),
    Column("username", String, nullable=False),
    Column("issued_ms", Integer, nullable=False),
    Column("expires_ms", Integer, nullable=False),
)

warehouses = Table(
    "warehouses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("sage_name", String, nullable=False),
)

products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sku", String, nullable=False, unique=True),
    Column("name", String, nullable=False),
    Column("barcode", String),
    Column("sage_sku", String, nullable=False),
    Column("units_per_sage_unit", Integer, nullable=False),
)

stock = Table(
    "stock",
    metadata,
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True),
    Column("warehouse_id", Integer, ForeignKey("warehouses.id"), primary_key=True),
    Column("level", Integer, nullable=False),  # physical sellable, quarantine excluded
    Column("allocated", Integer, nullable=False),
    Column("quarantine", Integer, nullable=False),
    Column("updated_ms", Integer, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_number", String, nullable=False, index=True),
    Column("ext_ref", String, index=True),
    Column("warehouse_id", Integer, nullable=False),
    Column("status_id", Integer, nullable=False),
    Column("courier_service", String, nullable=False),
    Column("channel", String),
    Column("currency", String, nullable=False),
    Column("address", Text, nullable=False),  # JSON object of the address fields as sent
    Column("order_value", DecimalText),
    Column("order_date_ms", Integer, nullable=False),
    Column("last_updated_ms", Integer, nullable=False, index=True),
    Column("despatch_ms", Integer),
    Column("tracking_number", String),
    Column("tracking_url", String),
    Column("number_of_parcels", Integer, nullable=False, default=0),
    Column("part", Integer, nullable=False, default=1),
    Column("number_of_parts", Integer, nullable=False, default=1),
    Column("root_id", Integer),  # first part of a split order
    Column("next_event_ms", Integer, index=True),
    Column("hidden_until_ms", Integer),  # late-delivery fault: kept out of List until then
    Column("return_due_ms", Integer, index=True),
)

order_items = Table(
    "order_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("warehouse_id", Integer, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", DecimalText, nullable=False),
    Column("unit_price_vat", DecimalText, nullable=False),
    Column("discount", DecimalText, nullable=False),
    Column("allocated", Integer, nullable=False),
    Column("on_back_order", Integer, nullable=False),
    Column("despatched", Integer, nullable=False),
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("shipment_ms", Integer, nullable=False),
    Column("tracking_number", String, nullable=False),
    Column("tracking_url", String, nullable=False),
    Column("items", Text, nullable=False),  # JSON [{ProductId, SKU, Quantity}]
)

asns = Table(
    "asns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("warehouse_id", Integer, nullable=False),
    Column("po_reference", String),
    Column("supplier", String),
    Column("estimated_ms", Integer),
    Column("comments", String),
    Column("status", String, nullable=False),
    Column("created_ms", Integer, nullable=False),
    Column("last_updated_ms", Integer, nullable=False, index=True),
)

asn_items = Table(
    "asn_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("asn_id", Integer, ForeignKey("asns.id"), nullable=False, index=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("expected", Integer, nullable=False),
    Column("received", Integer, nullable=False),
    Column("booked", Integer, nullable=False),
    Column("source_line_id", String),
)

returns = Table(
    "returns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("warehouse_id", Integer, nullable=False),
    Column("reference", String),
    Column("confirmed", Integer, nullable=False),
    Column("created_ms", Integer, nullable=False),
    Column("confirmed_ms", Integer),
    Column("last_updated_ms", Integer, nullable=False, index=True),
)

return_items = Table(
    "return_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("return_id", Integer, ForeignKey("returns.id"), nullable=False, index=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("warehouse_id", Integer, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("reason_id", Integer, nullable=False),
    Column("action", String, nullable=False),
    Column("comments", String),
)

stock_flow = Table(
    "stock_flow",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, nullable=False),
    Column("warehouse_id", Integer, nullable=False),
    Column("at_ms", Integer, nullable=False),
    Column("flow", String, nullable=False),
    Column("reason", String, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("level_change", Integer, nullable=False),
    Column("quarantine_change", Integer, nullable=False),
    Column("order_id", Integer),
    Column("asn_id", Integer),
    Column("return_id", Integer),
    Column("comment", String),
)
Index("ix_stock_flow_product", stock_flow.c.product_id, stock_flow.c.id)
Index("ix_stock_flow_at", stock_flow.c.at_ms)

# Deleted in this order on reset (children first).
ALL_TABLES = [
    stock_flow,
    return_items,
    returns,
    asn_items,
    asns,
    shipments,
    order_items,
    orders,
    stock,
    products,
    warehouses,
    api_keys,
    users,
    meta,
]


def open_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    metadata.create_all(engine)
    return engine


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return _EPOCH + timedelta(milliseconds=ms)
