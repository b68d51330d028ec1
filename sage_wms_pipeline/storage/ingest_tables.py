"""Tables the assets need beyond `storage.tables`, and small read/write helpers over them.

`storage.tables` holds the derived tables, the outbox, cursors, quarantine and four raw snapshots.
The incremental ingest needs a few more (orders and their lines on both sides, Sage despatches,
WMS movements, returns and receipts, proposed stock adjustments). They have their own MetaData,
created with `checkfirst` when the database resource starts, outside the versioned migrations of
`storage.migrations` (folding them into a migration is still to do).

Quantities and money are NUMERIC(18, 5) holding Decimal, as in `storage.tables`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline.storage.db import Database

metadata = sa.MetaData()
QTY = core.QTY
MONEY = core.MONEY
TS = core.TS

sage_orders = sa.Table(
    "sage_orders",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("document_no", sa.String(20), nullable=False, index=True),
    sa.Column("document_status", sa.String(40), nullable=False),
    sa.Column("customer_id", sa.BigInteger),
    sa.Column("document_date", TS),
    sa.Column("total_net_value", MONEY),
    sa.Column("date_time_updated", TS, nullable=False),
    sa.Column("payload", sa.Text, nullable=False, comment="The order with its lines, exact JSON"),
)

sage_order_lines = sa.Table(
    "sage_order_lines",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("order_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("document_no", sa.String(20), nullable=False, index=True),
    sa.Column("line_type", sa.String(40), nullable=False),
    sa.Column("code", sa.String(30)),
    sa.Column("warehouse", sa.String(20)),
    sa.Column("line_quantity", QTY, nullable=False),
    sa.Column("allocated_quantity", QTY, nullable=False),
    sa.Column("despatch_receipt_quantity", QTY, nullable=False),
    sa.Column("selling_unit_price", MONEY, nullable=False),
    sa.Column("line_total_value", MONEY),
)

sage_goods_in = sa.Table(
    "sage_goods_in",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False, comment="Sage transaction id"),
    sa.Column("sku", sa.String(30), nullable=False, index=True),
    sa.Column("warehouse", sa.String(20), nullable=False),
    sa.Column("transaction_type", sa.String(40), nullable=False),
    sa.Column("reference", sa.String(60)),
    sa.Column("received_at", TS, nullable=False),
    sa.Column("quantity", QTY, nullable=False),
    sa.Column("unit_cost", MONEY, nullable=False),
)

sage_despatch_lines = sa.Table(
    "sage_despatch_lines",
    metadata,
    sa.Column("sop_despatch_line_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("sop_despatch_id", sa.BigInteger),
    sa.Column("sop_despatch_date", TS),
    sa.Column("sop_order_id", sa.BigInteger, index=True),
    sa.Column("sop_order_document_no", sa.String(20), index=True),
    sa.Column("sop_order_line_id", sa.BigInteger, index=True),
    sa.Column("product_code", sa.String(30)),
    sa.Column("warehouse_name", sa.String(20)),
    sa.Column("quantity", QTY, nullable=False),
    sa.Column("date_time_updated", TS),
)

wms_orders = sa.Table(
    "wms_orders",
    metadata,
    sa.Column("order_id", sa.String(40), primary_key=True),
    sa.Column("order_number", sa.String(50), nullable=False, index=True),
    sa.Column("external_reference", sa.String(50)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("raw_status", sa.String(40), nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("warehouse_id", sa.String(20)),
    sa.Column("despatched_at", TS),
    sa.Column("part", sa.Integer),
    sa.Column("number_of_parts", sa.Integer),
    sa.Column("dedupe_key", sa.String(64), nullable=False),
)

wms_order_lines = sa.Table(
    "wms_order_lines",
    metadata,
    sa.Column("order_id", sa.String(40), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("order_number", sa.String(50), nullable=False),
    sa.Column("wms_sku", sa.String(60), nullable=False),
    sa.Column("wms_warehouse_id", sa.Integer),
    sa.Column("quantity", QTY, nullable=False),
    sa.Column("allocated", QTY, nullable=False),
    sa.Column("back_ordered", QTY, nullable=False),
)

wms_stock_movements = sa.Table(
    "wms_stock_movements",
    metadata,
    sa.Column("dedupe_key", sa.String(64), primary_key=True),
    sa.Column("movement_id", sa.String(40)),
    sa.Column("wms_sku", sa.String(60), nullable=False),
    sa.Column("wms_warehouse_id", sa.Integer, nullable=False),
    sa.Column("quantity", QTY, nullable=False, comment="Signed change of the physical level"),
    sa.Column("kind", sa.String(30), nullable=False),
    sa.Column("raw_action", sa.String(40), nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("order_id", sa.String(40)),
    sa.Column("occurred_at", TS, nullable=False),
)

wms_returns = sa.Table(
    "wms_returns",
    metadata,
    sa.Column("dedupe_key", sa.String(64), primary_key=True),
    sa.Column("return_id", sa.String(40), nullable=False),
    sa.Column("order_id", sa.String(40)),
    sa.Column("order_number", sa.String(50)),
    sa.Column("wms_sku", sa.String(60), nullable=False),
    sa.Column("wms_warehouse_id", sa.Integer),
    sa.Column("quantity", QTY, nullable=False),
    sa.Column("disposition", sa.String(20), nullable=False),
    sa.Column("raw_status", sa.String(40), nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("returned_at", TS, nullable=False),
)

wms_receipts = sa.Table(
    "wms_receipts",
    metadata,
    sa.Column("asn_id", sa.String(40), primary_key=True),
    sa.Column("wms_sku", sa.String(60), primary_key=True),
    sa.Column("wms_warehouse_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("reference", sa.String(60)),
    sa.Column("quantity_expected", QTY, nullable=False),
    sa.Column("quantity_received", QTY, nullable=False),
    sa.Column("quantity_booked", QTY, nullable=False),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("raw_status", sa.String(40), nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

despatch_enqueued = sa.Table(
    "despatch_enqueued",
    metadata,
    sa.Column("source_key", sa.String(200), primary_key=True, comment="WmsDespatchLine.dedupe_key"),
    sa.Column("enqueued_at", TS, nullable=False),
)

stock_adjustments = sa.Table(
    "stock_adjustments",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True, comment="source:dedupe key of the WMS record"),
    sa.Column("source", sa.String(30), nullable=False, comment="receipt | return | movement"),
    sa.Column("reference", sa.String(100)),
    sa.Column("sku", sa.String(30), nullable=False),
    sa.Column("warehouse", sa.String(20), nullable=False),
    sa.Column("quantity", QTY, nullable=False, comment="Sage units, signed: + raises Sage stock"),
    sa.Column("unit_cost", MONEY, nullable=False),
    sa.Column("value", MONEY, nullable=False, comment="quantity x unit_cost, to the penny"),
    sa.Column("debit_nominal", sa.String(20), nullable=False),
    sa.Column("credit_nominal", sa.String(20), nullable=False),
    sa.Column("route", sa.String(20), nullable=False, comment="stocktake | finance_proposal"),
    sa.Column("state", sa.String(20), nullable=False, comment="proposed | posted | failed"),
    sa.Column("detail", sa.Text),
    sa.Column("occurred_at", TS, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("posted_at", TS),
)


def now_utc() -> datetime:
    return datetime.now(UTC)


def plot_number(value: Decimal | int) -> int | float:
    """A figure for Dagster's metadata plots only (never computed with): int when whole."""
    d = Decimal(value)
    return int(d) if d == d.to_integral_value() else float(d)


_DDL_LOCK = 0x5A6E_3D02  # PostgreSQL advisory lock: two processes starting together create once


def ensure_tables(db: Database) -> None:
    """Create the tables above if missing, in one write transaction (serialised across processes)."""
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _DDL_LOCK})
        metadata.create_all(conn, checkfirst=True)


def read_frame(engine: sa.Engine, table: sa.Table, where: Any = None) -> pd.DataFrame:
    """A table (or the rows matching `where`) as a DataFrame; NUMERIC columns stay Decimal."""
    query = sa.select(table)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts are written for PostgreSQL and SQLite, not {conn.dialect.name}")


def insert_if_absent(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows whose primary key is new; returns how many were inserted."""
    if not rows:
        return 0
    stmt = _insert(conn, table).on_conflict_do_nothing(index_elements=[c.name for c in table.primary_key])
    inserted = 0
    for chunk in _chunks(rows, 500):
        inserted += conn.execute(stmt, list(chunk)).rowcount or 0
    return inserted


def upsert(
    conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, newer_by: str | None = None
) -> int:
    """Insert or replace by primary key; with `newer_by`, an existing row is only replaced by a row
    whose `newer_by` column is at least as new (a late, stale copy never overwrites)."""
    if not rows:
        return 0
    keys = [c.name for c in table.primary_key]
    stmt = _insert(conn, table)
    update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    where = table.c[newer_by] <= stmt.excluded[newer_by] if newer_by else None
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=update, where=where)
    for chunk in _chunks(rows, 500):
        conn.execute(stmt, list(chunk))
    return len(rows)


def _chunks(rows: Sequence[Mapping[str, Any]], size: int) -> Iterable[Sequence[Mapping[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# ------------------------------------------------------------------------------ cursors, quarantine


def get_cursor(conn: sa.Connection, name: str) -> str | None:
    t = core.ingest_cursors
    return conn.execute(sa.select(t.c.value).where(t.c.name == name)).scalar()


def set_cursor(conn: sa.Connection, name: str, value: str | None) -> None:
    if value is None:
        return
    upsert(conn, core.ingest_cursors, [{"name": name, "value": value, "updated_at": now_utc()}])


def quarantine(conn: sa.Connection, source: str, records: Iterable[Any]) -> int:
    """Keep every record a client could not normalise, with its reason (never dropped).

    A record already kept (same source, key and reason) is not kept twice, so a re-read is harmless.
    """
    t = core.wms_quarantine
    rows = []
    for rec in records:
        key = getattr(rec, "dedupe_key", None) or None
        raw = jsonutil.dumps(getattr(rec, "payload", rec))
        exists = conn.execute(
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.source == source, t.c.reason == rec.reason, t.c.raw == raw)
        ).scalar()
        if exists:
            continue
        rows.append(
            {"source": source, "record_key": key, "reason": rec.reason, "raw": raw, "received_at": now_utc()}
        )
    if rows:
        conn.execute(t.insert(), rows)
    return len(rows)
