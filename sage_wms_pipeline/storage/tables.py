"""SQLAlchemy Core tables of the pipeline's database.

Derived tables (available_stock, stock_parity, valuation_deltas, valuation_summary) are built
from their pandera schemas so the frame and the table cannot drift apart: ``*_e5`` / ``*_pence``
columns are exact scaled BIGINTs (see ``domain.units``). Operational and raw tables hold
quantities and money as NUMERIC(18, 5) (exact text on SQLite), which Sage's 5 dp fits exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import pandera.pandas as pa
import sqlalchemy as sa

from sage_wms_pipeline.storage import schemas

metadata = sa.MetaData()


class ExactDecimal(sa.types.TypeDecorator[Decimal]):
    """NUMERIC(18, 5) on PostgreSQL; on SQLite, whose NUMERIC is a binary float, exact decimal text."""

    impl = sa.Numeric(18, 5, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.Numeric(18, 5, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError(f"binary float {value!r} refused for an exact decimal column; pass Decimal")
        d = Decimal(value)
        if d != d.quantize(_STEP):
            raise ValueError(f"{value} has more than 5 decimal places")
        return str(d) if dialect.name == "sqlite" else d

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every dialect (SQLite keeps naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        if value.tzinfo is None:
            raise ValueError(f"naive timestamp {value!r} refused; pass a timezone-aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_STEP = Decimal("0.00001")
QTY = ExactDecimal()
MONEY = ExactDecimal()
TS = UtcDateTime()


def _column_type(dtype: object) -> sa.types.TypeEngine:
    text = str(dtype)
    if text in ("int64", "Int64"):
        return sa.BigInteger()
    if text == "bool":
        return sa.Boolean()
    if text.startswith("datetime64"):
        return TS
    if text in ("str", "object", "string"):
        return sa.String(120)
    raise TypeError(f"no SQL type for pandera dtype {text}")


def _table_from_schema(table_name: str, model: type[pa.DataFrameModel], key: list[str]) -> sa.Table:
    schema = model.to_schema()
    cols = [
        sa.Column(name, _column_type(col.dtype), nullable=bool(col.nullable), primary_key=name in key)
        for name, col in schema.columns.items()
    ]
    return sa.Table(table_name, metadata, *cols)


available_stock = _table_from_schema("available_stock", schemas.AvailableStock, ["sku", "warehouse"])
stock_parity = _table_from_schema("stock_parity", schemas.StockParity, ["sku", "warehouse"])
valuation_deltas = _table_from_schema("valuation_deltas", schemas.ValuationDetail, ["sku", "warehouse"])
valuation_summary = _table_from_schema(
    "valuation_summary", schemas.ValuationSummary, ["warehouse", "product_group", "stock_nominal_code"]
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", TS, nullable=False),
)

sync_exceptions = sa.Table(
    "sync_exceptions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(60), nullable=False),
    sa.Column("record", sa.String(200), nullable=False),
    sa.Column("context", sa.Text, nullable=False, default="{}"),  # exact JSON via jsonutil
    sa.Column("owner", sa.String(20), nullable=False),
    sa.Column("first_seen", TS, nullable=False),
    sa.Column("last_seen", TS, nullable=False),
    sa.Column("resolved", sa.Boolean, nullable=False, default=False),
    sa.Column("resolved_at", TS),
    sa.UniqueConstraint("kind", "record", name="uq_sync_exceptions_kind_record"),
    sa.CheckConstraint("owner IN ('finance', 'operations')", name="ck_sync_exceptions_owner"),
)

despatch_outbox = sa.Table(
    "despatch_outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(200), nullable=False, unique=True),
    sa.Column("order_id", sa.BigInteger, nullable=False, comment="Sage sop_order id"),
    sa.Column("document_no", sa.String(20), nullable=False),
    sa.Column("line_id", sa.BigInteger, nullable=False, comment="Sage sop_order_line id"),
    sa.Column("sku", sa.String(30), nullable=False),
    sa.Column("warehouse", sa.String(20), nullable=False),
    sa.Column("quantity", QTY, nullable=False, comment="Sage stock units"),
    sa.Column("state", sa.String(10), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", TS),
    sa.Column("claimed_by", sa.String(100)),
    sa.Column("claim_token", sa.String(40)),
    sa.Column("lease_expires_at", TS),
    sa.Column("source", sa.Text, nullable=False, default="{}", comment="The WMS line, exact JSON"),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("posted_at", TS),
    sa.CheckConstraint(
        "state IN ('pending', 'posting', 'posted', 'deferred', 'stuck')", name="ck_despatch_outbox_state"
    ),
    sa.CheckConstraint("quantity > 0", name="ck_despatch_outbox_quantity"),
    sa.Index("ix_despatch_outbox_due", "state", "next_attempt_at"),
)

order_manifests = sa.Table(
    "order_manifests",
    metadata,
    sa.Column("order_number", sa.String(30), primary_key=True),
    sa.Column("sage_order_id", sa.BigInteger, nullable=False),
    sa.Column("sage_document_no", sa.String(20), nullable=False, index=True),
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("warehouse", sa.String(20), nullable=False),
    sa.Column("wms_warehouse_id", sa.Integer, nullable=False),
    sa.Column("total", MONEY, nullable=False),
    sa.Column("lines", sa.Text, nullable=False, comment="Manifest lines, exact JSON"),
    sa.Column("wms_order_id", sa.BigInteger),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("sent_at", TS),
)

order_manifest_excluded = sa.Table(
    "order_manifest_excluded",
    metadata,
    sa.Column("sage_order_id", sa.BigInteger, primary_key=True),
    sa.Column("sage_line_id", sa.BigInteger, primary_key=True),
    sa.Column("sage_document_no", sa.String(20), nullable=False),
    sa.Column("line_type", sa.String(30), nullable=False),
    sa.Column("code", sa.String(30)),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("line_total", MONEY, nullable=False),
)

wms_quarantine = sa.Table(
    "wms_quarantine",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("record_key", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("received_at", TS, nullable=False),
)

ingest_cursors = sa.Table(
    "ingest_cursors",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

# Raw snapshots, written whole by replace_table (checked against these columns).
sage_products = sa.Table(
    "sage_products",
    metadata,
    sa.Column("sku", sa.String(30), primary_key=True),
    sa.Column("name", sa.String(60), nullable=False),
    sa.Column("product_group", sa.String(20), nullable=False),
    sa.Column("product_type", sa.String(20), nullable=False),
    sa.Column("costing_method", sa.String(20), nullable=False),
    sa.Column("stock_nominal_code", sa.String(20), nullable=False),
    sa.Column("standard_cost", MONEY, nullable=False),
    sa.Column("average_buying_price", MONEY, nullable=False),
)

sage_holdings = sa.Table(
    "sage_holdings",
    metadata,
    sa.Column("sku", sa.String(30), primary_key=True),
    sa.Column("warehouse", sa.String(20), primary_key=True),
    sa.Column("confirmed_qty_in_stock", QTY, nullable=False),
    sa.Column("unconfirmed_qty_in_stock", QTY, nullable=False),
    sa.Column("quantity_in_stock", QTY, nullable=False),
    sa.Column("quantity_allocated", QTY, nullable=False),
    sa.Column("free_stock_available", QTY, nullable=False),
    sa.Column("snapshot_at", TS, nullable=False),
)

wms_stock = sa.Table(
    "wms_stock",
    metadata,
    sa.Column("wms_sku", sa.String(60), primary_key=True),
    sa.Column("wms_warehouse_id", sa.Integer, primary_key=True),
    sa.Column("level", QTY, nullable=False),
    sa.Column("quarantine", QTY, nullable=False),
    sa.Column("allocated", QTY, nullable=False),
    sa.Column("snapshot_at", TS, nullable=False),
)

wms_despatches = sa.Table(
    "wms_despatches",
    metadata,
    sa.Column("dedupe_key", sa.String(200), primary_key=True),
    sa.Column("order_number", sa.String(30), nullable=False, index=True),
    sa.Column("line_ref", sa.String(100), nullable=False),
    sa.Column("wms_sku", sa.String(60), nullable=False),
    sa.Column("wms_warehouse_id", sa.Integer, nullable=False),
    sa.Column("quantity", QTY, nullable=False),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("event_at", TS, nullable=False),
)

RAW_TABLES = ("sage_products", "sage_holdings", "wms_stock", "wms_despatches")


def frame_columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.columns]


def empty_frame(table: sa.Table) -> pd.DataFrame:
    return pd.DataFrame(columns=frame_columns(table))
