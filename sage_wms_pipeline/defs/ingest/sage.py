"""Sage 200 ingest: products and valuation prices, holdings (full reads); orders and despatches
(incremental by `date_time_updated`, re-reading a short overlap so a late commit is never missed;
rows are upserted by id, so a re-read changes nothing)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200.client import Sage200Client
from sage_wms_pipeline.clients.sage200.errors import NotFoundError
from sage_wms_pipeline.defs.freshness import freshness_for
from sage_wms_pipeline.defs.resources import ParityDatabase, Sage200Resource
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core

GROUP = "sage_ingest"
KINDS = {"sage200", "python"}
INGEST_RETRY = dg.RetryPolicy(
    max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# Re-read this much before the cursor: a transaction committed late with an older timestamp.
OVERLAP = timedelta(minutes=5)


# ------------------------------------------------------------------------------------ conversions


def dec(value: Any) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, float):
        raise TypeError(f"binary float {value!r} where an exact number was expected")
    return Decimal(value)


def ts(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def strip_enum(value: str | None, prefix: str) -> str:
    """`EnumStockItemTypeServiceLabour` -> `ServiceLabour`; a plain value is kept."""
    text = value or ""
    return text[len(prefix) :] if text.startswith(prefix) else text


def costing_method(value: str | None) -> str:
    text = strip_enum(strip_enum(value, "EnumCostingMethodType"), "EnumCostingMethod")
    for name in ("FIFO", "Average", "Standard", "Actual"):
        if text.lower() == name.lower():
            return name
    raise ValueError(f"product_groups.costing_method: unknown costing method {value!r}")


def _nominal_codes(client: Sage200Client) -> dict[int, str]:
    try:
        return {
            int(r["id"]): str(r.get("reference") or r.get("code") or r["id"])
            for r in client.list("nominal_codes")
        }
    except NotFoundError:
        return {}


def products_frame(
    products: list[dict[str, Any]], groups: list[dict[str, Any]], nominal: dict[int, str]
) -> pd.DataFrame:
    by_id = {int(g["id"]): g for g in groups}
    rows = []
    for i, p in enumerate(products):
        g = by_id.get(int(p.get("product_group_id") or 0))
        if g is None:
            raise ValueError(
                f"products[{i}] ({p.get('code')}): product_group_id: "
                f"unknown group {p.get('product_group_id')}"
            )
        nominal_id = p.get("stock_nominal_code_id") or g.get("stock_nominal_code_id")
        rows.append(
            {
                "sku": p["code"],
                "name": (p.get("name") or "")[:60],
                "product_group": g["code"],
                "product_type": strip_enum(g.get("product_type"), "EnumStockItemType"),
                "costing_method": costing_method(g.get("costing_method")),
                "stock_nominal_code": nominal.get(int(nominal_id), str(nominal_id)) if nominal_id else "",
                "standard_cost": dec(p.get("standard_cost")),
                "average_buying_price": dec(p.get("average_buying_price")),
            }
        )
    return pd.DataFrame(rows, columns=core.frame_columns(core.sage_products))


def order_rows(orders: Iterable[dict[str, Any]], warehouses: dict[int, str]) -> tuple[list[dict], list[dict]]:
    headers, lines = [], []
    for o in orders:
        headers.append(
            {
                "id": int(o["id"]),
                "document_no": o["document_no"],
                "document_status": o.get("document_status") or "",
                "customer_id": o.get("customer_id"),
                "document_date": ts(o.get("document_date")),
                "total_net_value": dec(o["total_net_value"])
                if o.get("total_net_value") is not None
                else None,
                "date_time_updated": ts(o.get("date_time_updated")),
                "payload": jsonutil.dumps(o),
            }
        )
        for line in o.get("lines") or []:
            lines.append(
                {
                    "id": int(line["id"]),
                    "order_id": int(o["id"]),
                    "document_no": o["document_no"],
                    "line_type": line.get("line_type") or "",
                    "code": line.get("code"),
                    "warehouse": warehouses.get(int(line["warehouse_id"]))
                    if line.get("warehouse_id")
                    else None,
                    "line_quantity": dec(line.get("line_quantity")),
                    "allocated_quantity": dec(line.get("allocated_quantity")),
                    "despatch_receipt_quantity": dec(line.get("despatch_receipt_quantity")),
                    "selling_unit_price": dec(line.get("selling_unit_price")),
                    "line_total_value": dec(line["line_total_value"])
                    if line.get("line_total_value") is not None
                    else None,
                }
            )
    return headers, lines


def _cursor_start(value: str | None) -> datetime | None:
    return None if value is None else ts(value) - OVERLAP  # type: ignore[operator]


def _max_updated(rows: Iterable[dict[str, Any]], current: str | None) -> str | None:
    stamps = [ts(r.get("date_time_updated")) for r in rows]
    stamps = [s for s in stamps if s is not None]
    if current is not None:
        stamps.append(ts(current))  # type: ignore[arg-type]
    return jsonutil.iso_z(max(stamps)) if stamps else None  # type: ignore[type-var]


def warehouse_names(client: Sage200Client) -> dict[int, str]:
    return {int(w["id"]): w["name"] for w in client.list("warehouses", select="id,name")}


# ----------------------------------------------------------------------------------------- assets


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("sage_products"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="Sage products with their group's type, costing method, stock nominal code and valuation "
    "prices (full read), plus Sage's goods-in history with costs (FIFO layers, receipts known to Sage).",
)
def sage_products(sage: Sage200Resource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    with sage.client() as client:
        groups = client.list("product_groups")
        products = client.list("products")
        nominal = _nominal_codes(client)
        frame = products_frame(products, groups, nominal)
        # Stock coming in (receipts, opening balances, returns, gains), with its cost: the FIFO cost
        # layers are rebuilt from it, and a WMS receipt is known to be in Sage by its reference.
        goods_in = client.list("product_transaction_views", filter="quantity gt 0")
    db = parity_db.database()
    rows = [
        {
            "id": int(r["id"]),
            "sku": r["product_code"],
            "warehouse": r.get("warehouse_name") or "",
            "transaction_type": r.get("transaction_type") or "",
            "reference": (r.get("reference") or "")[:60] or None,
            "received_at": ts(r.get("transaction_date")),
            "quantity": dec(r.get("quantity")),
            "unit_cost": dec(r.get("unit_cost_price")),
        }
        for r in goods_in
    ]
    with db.write() as conn:
        conn.execute(store.sage_goods_in.delete())
        store.insert_if_absent(conn, store.sage_goods_in, rows)
    written = db.replace_table("sage_products", frame)
    return dg.MaterializeResult(
        metadata={
            "rows": written,
            "stock_items": int((frame["product_type"] == "Stock").sum()),
            "product_groups": len(groups),
            "goods_in_transactions": len(rows),
            **{f"costing/{m}": int(n) for m, n in frame["costing_method"].value_counts().items()},
        }
    )


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("sage_warehouse_holdings"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="Sage warehouse holdings per product and warehouse (full read): confirmed, unconfirmed, "
    "in stock, allocated, free.",
)
def sage_warehouse_holdings(sage: Sage200Resource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    with sage.client() as client:
        codes = {int(p["id"]): p["code"] for p in client.list("products", select="id,code")}
        holdings = client.list("warehouse_holdings")
        names = warehouse_names(client)
    now = store.now_utc()
    rows = []
    for i, h in enumerate(holdings):
        code = codes.get(int(h["product_id"]))
        if code is None:
            raise ValueError(
                f"warehouse_holdings[{i}] (id {h.get('id')}): product_id: unknown product {h['product_id']}"
            )
        rows.append(
            {
                "sku": code,
                "warehouse": h.get("warehouse_name")
                or names.get(int(h["warehouse_id"]), str(h["warehouse_id"])),
                "confirmed_qty_in_stock": dec(h.get("confirmed_qty_in_stock")),
                "unconfirmed_qty_in_stock": dec(h.get("unconfirmed_qty_in_stock")),
                "quantity_in_stock": dec(h.get("quantity_in_stock")),
                "quantity_allocated": dec(h.get("quantity_allocated")),
                "free_stock_available": dec(h.get("free_stock_available")),
                "snapshot_at": now,
            }
        )
    frame = pd.DataFrame(rows, columns=core.frame_columns(core.sage_holdings))
    written = parity_db.database().replace_table("sage_holdings", frame)
    total = sum(frame["quantity_in_stock"], Decimal(0))
    return dg.MaterializeResult(
        metadata={
            "rows": written,
            "warehouses": int(frame["warehouse"].nunique()),
            "quantity_in_stock": store.plot_number(total),
            "unconfirmed_lines": int((frame["unconfirmed_qty_in_stock"] != 0).sum()),
        }
    )


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("sage_sales_orders"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    description="Sage sales orders with their lines, read incrementally by date_time_updated and upserted.",
)
def sage_sales_orders(sage: Sage200Resource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("sage_sales_orders")
    with sage.client() as client:
        orders = client.list_updated_since("sop_orders", _cursor_start(cursor), expand="lines")
        names = warehouse_names(client)
    headers, lines = order_rows(orders, names)
    with db.write() as conn:
        store.upsert(conn, store.sage_orders, headers)
        ids = [h["id"] for h in headers]
        for start in range(0, len(ids), 500):
            conn.execute(
                store.sage_order_lines.delete().where(
                    store.sage_order_lines.c.order_id.in_(ids[start : start + 500])
                )
            )
        store.insert_if_absent(conn, store.sage_order_lines, lines)
        store.set_cursor(conn, "sage_sales_orders", _max_updated(orders, cursor))
        total = conn.execute(sa.select(sa.func.count()).select_from(store.sage_orders)).scalar() or 0
        live = (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(store.sage_orders)
                .where(store.sage_orders.c.document_status == "EnumDocumentStatusLive")
            ).scalar()
            or 0
        )
    return dg.MaterializeResult(
        metadata={
            "orders_read": len(headers),
            "lines_read": len(lines),
            "orders_total": int(total),
            "orders_live": int(live),
            "cursor": dg.MetadataValue.text(_max_updated(orders, cursor) or ""),
        }
    )


@dg.asset(
    group_name=GROUP,
    freshness_policy=freshness_for("sage_despatches"),
    kinds=KINDS,
    retry_policy=INGEST_RETRY,
    deps=["despatch_postings"],
    description="Sage's own record of despatches (sop_order_despatch_line_views), read incrementally: "
    "what actually landed in Sage after the postings.",
)
def sage_despatches(sage: Sage200Resource, parity_db: ParityDatabase) -> dg.MaterializeResult:
    db = parity_db.database()
    cursor = db.get_cursor("sage_despatches")
    with sage.client() as client:
        rows = client.list_updated_since(
            "sop_order_despatch_line_views", _cursor_start(cursor), orderby="sop_despatch_line_id"
        )
    out = [
        {
            "sop_despatch_line_id": int(r["sop_despatch_line_id"]),
            "sop_despatch_id": r.get("sop_despatch_id"),
            "sop_despatch_date": ts(r.get("sop_despatch_date")),
            "sop_order_id": r.get("sop_order_id"),
            "sop_order_document_no": r.get("sop_order_document_no"),
            "sop_order_line_id": r.get("sop_order_line_id"),
            "product_code": r.get("product_code"),
            "warehouse_name": r.get("warehouse_name"),
            "quantity": dec(r.get("sop_despatch_line_quantity")),
            "date_time_updated": ts(r.get("date_time_updated")),
        }
        for r in rows
    ]
    with db.write() as conn:
        store.upsert(conn, store.sage_despatch_lines, out)
        store.set_cursor(conn, "sage_despatches", _max_updated(rows, cursor))
        total = conn.execute(sa.select(sa.func.count()).select_from(store.sage_despatch_lines)).scalar() or 0
    return dg.MaterializeResult(
        metadata={
            "lines_read": len(out),
            "lines_total": int(total),
            "quantity_read": store.plot_number(sum((r["quantity"] for r in out), Decimal(0))),
        }
    )
