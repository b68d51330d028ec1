"""Ingest assets against the simulators: incremental cursors, dedupe, monotonic orders, quarantine."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import httpx
import sqlalchemy as sa

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.domain.manifests import parse_order_number
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline_tests.defs.conftest import Pipeline
from sage_wms_pipeline_tests.defs.test_end_to_end import MintsoftReader


def metadata(result, name: str) -> dict:  # type: ignore[no-untyped-def]
    events = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    return {k: v.value for k, v in events[name].materialization.metadata.items()}


def wms_faults(pipeline: Pipeline, **faults: object) -> None:
    resp = httpx.post(
        f"{pipeline.wms_url}/_sandbox/faults",
        content=jsonutil.dumps(faults),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    resp.raise_for_status()


def test_sage_ingest_reads_products_holdings_and_orders_incrementally(pipeline: Pipeline) -> None:
    first = pipeline.materialize("sage_products", "sage_warehouse_holdings", "sage_sales_orders")
    products = {p["sku"]: p for p in pipeline.query(core.sage_products)}
    assert products["TSHIRT-BLK-M"]["costing_method"] == "FIFO"
    assert products["GIFTWRAP"]["product_type"] == "ServiceLabour"
    assert isinstance(products["MUG-STONE"]["average_buying_price"], Decimal)
    holdings = pipeline.query(core.sage_holdings)
    assert all(
        h["quantity_in_stock"] == h["confirmed_qty_in_stock"] + h["unconfirmed_qty_in_stock"]
        for h in holdings
    )
    assert metadata(first, "sage_sales_orders")["orders_read"] == 10
    lines = pipeline.query(store.sage_order_lines)
    assert {line["line_type"] for line in lines} >= {"EnumLineTypeStandard", "EnumLineTypeComment"}

    # Nothing changed: the incremental read comes back with the overlap only, and nothing duplicates.
    again = pipeline.materialize("sage_sales_orders")
    assert metadata(again, "sage_sales_orders")["orders_total"] == 10
    assert len(pipeline.query(store.sage_order_lines)) == len(lines)


def test_wms_ingest_dedupes_orders_monotonically_and_quarantines_junk(pipeline: Pipeline) -> None:
    pipeline.materialize("sage_products", "sage_sales_orders", "wms_orders")
    pipeline.materialize("order_manifests")
    wms_faults(pipeline, duplicate_rate="0.5", out_of_order_rate="0.5", malformed_rate="0.3", seed=3)
    for hours in (2, 2, 3, 3):
        pipeline.advance_wms_clock(hours * 3600)
        result = pipeline.materialize("wms_orders", "wms_despatches", "wms_stock_movements")
    meta = metadata(result, "wms_despatches")
    assert "records_read" in meta and "quarantined" in meta

    # Junk is kept with its reason, never dropped, and reported.
    quarantined = pipeline.query(core.wms_quarantine)
    assert quarantined, "malformed_rate 0.3 produced no quarantined record"
    assert all(q["reason"] and q["raw"] for q in quarantined)
    assert {q["source"] for q in quarantined} <= {"wms_orders", "wms_despatches", "wms_stock_movements"}
    # ... and each is an open sync exception for operations, with its reason.
    pipeline.materialize("sync_exceptions")
    open_q = [e for e in pipeline.db.exceptions(open_only=True) if e["kind"] == "quarantined_input"]
    assert len(open_q) == len(quarantined)
    assert all(e["owner"] == "operations" and e["context"]["reason"] for e in open_q)

    # Orders: the stored state is the WMS's final state (never moved backwards by stale copies).
    wms_faults(pipeline, duplicate_rate="0", out_of_order_rate="0", malformed_rate="0")
    truth = {str(o["ID"]): o["OrderStatus"] for o in MintsoftReader(pipeline.wms_url).orders()}
    stored = {o["order_id"]: o["raw_status"] for o in pipeline.query(store.wms_orders)}
    assert stored == {k: v for k, v in truth.items() if k in stored}
    assert set(stored) == set(truth)

    # Despatch lines: each shipment line once, whatever the repeats; they add up to the WMS's.
    rows = pipeline.query(core.wms_despatches)
    assert len({r["dedupe_key"] for r in rows}) == len(rows)
    ours: Counter[tuple[str, str]] = Counter()
    for r in rows:
        ours[(parse_order_number(r["order_number"])[0], r["wms_sku"])] += r["quantity"]
    theirs: Counter[tuple[str, str]] = Counter()
    for (doc, sku, _wh), qty in MintsoftReader(pipeline.wms_url).despatched().items():
        theirs[(doc, sku)] += qty
    assert {k: v for k, v in ours.items() if v} == {k: v for k, v in theirs.items() if v}

    # Re-reading from the stored cursors adds nothing.
    before = {t.name: len(pipeline.query(t)) for t in (core.wms_despatches, store.wms_stock_movements)}
    pipeline.materialize("wms_despatches", "wms_stock_movements")
    after = {t.name: len(pipeline.query(t)) for t in (core.wms_despatches, store.wms_stock_movements)}
    assert before == after
    with pipeline.db.read() as conn:
        cursors = dict(conn.execute(sa.select(core.ingest_cursors.c.name, core.ingest_cursors.c.value)).all())
    assert {"wms_orders", "wms_despatches", "wms_stock_movements"} <= set(cursors)


def test_a_record_whose_warehouse_id_is_not_a_number_is_quarantined_not_dropped() -> None:
    from datetime import UTC, datetime

    from sage_wms_pipeline.clients.wms.base import StockPosition
    from sage_wms_pipeline.defs.ingest.wms import _by_warehouse

    def position(warehouse_id: str) -> StockPosition:
        n = Decimal(5)
        return StockPosition(
            vendor="mintsoft", sku="MUG-STONE", warehouse_id=warehouse_id, physical=n, allocated=Decimal(0),
            free=n, quarantine=Decimal(0), inbound=Decimal(0), as_of=datetime(2026, 11, 23, tzinfo=UTC),
            dedupe_key=f"k-{warehouse_id}",
        )  # fmt: skip

    kept, bad = _by_warehouse([position("2"), position("LEEDS")], "stock", lambda p: f"stock {p.sku}")
    assert [(p.warehouse_id, wh) for p, wh in kept] == [("2", 2)]
    assert [(q.source, q.reason, q.dedupe_key) for q in bad] == [
        ("stock", "stock MUG-STONE: warehouse_id: 'LEEDS' is not a number", "k-LEEDS")
    ]
    assert bad[0].payload["warehouse_id"] == "LEEDS"
