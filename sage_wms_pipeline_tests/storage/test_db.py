from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa

from sage_wms_pipeline.domain.available_stock import available_stock
from sage_wms_pipeline.domain.manifests import SageOrder, build_manifests
from sage_wms_pipeline.domain.parity import stock_parity
from sage_wms_pipeline.domain.policy import Policy, load_policy
from sage_wms_pipeline.domain.valuation import valuation_deltas
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline.storage import migrations, tables
from sage_wms_pipeline.storage.db import Database, StorageError
from sage_wms_pipeline_tests.domain.scenario_frames import frames
from sage_wms_pipeline_tests.storage.conftest import DbTarget

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
POLICY = load_policy()


def _derived() -> dict[str, pd.DataFrame]:
    s = read_scenario(demo_scenario_path())
    f = frames(s)
    policy = Policy().with_scenario_mappings(s)
    parity = stock_parity(f["wms_stock"], f["sage_holdings"], f["explanations"], policy, f["cutoff"])
    detail, summary = valuation_deltas(parity, f["prices"], policy, f["fifo_layers"])
    alloc = pd.DataFrame(columns=["order_number", "wms_sku", "wms_warehouse_id", "wms_status", "quantity_e5"])
    avail = available_stock(f["wms_stock"], alloc, policy, f["sage_holdings"])
    return {
        "stock_parity": parity,
        "valuation_deltas": detail,
        "valuation_summary": summary,
        "available_stock": avail,
    }


def test_migrate_is_versioned_and_idempotent(db_url: DbTarget) -> None:
    db = db_url.database()
    db.migrate()
    assert db.migrate() == []
    with db.read() as conn:
        assert migrations.current_version(conn) == migrations.LATEST
        present = set(sa.inspect(conn).get_table_names(schema=db_url.schema))
    assert set(tables.metadata.tables) <= present
    db.dispose()


def test_concurrent_first_migrations_do_not_collide(tmp_path: pytest.TempPathFactory) -> None:
    url = f"sqlite:///{tmp_path}/race.sqlite"  # type: ignore[operator]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Database(url).migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Database(url).read() as conn:
        assert migrations.current_version(conn) == migrations.LATEST


def test_derived_tables_round_trip_exactly(database: Database) -> None:
    for name, df in _derived().items():
        assert database.replace_table(name, df) == len(df)
        back = database.read_table(name)
        key = list(tables.metadata.tables[name].primary_key.columns.keys())
        back = back.sort_values(key, ignore_index=True)[df.columns]
        want = df.sort_values(key, ignore_index=True)
        pd.testing.assert_frame_equal(back, want, check_dtype=False)
        assert (back.dtypes == want.dtypes).all(), name


def test_invalid_frame_is_refused_and_nothing_changes(database: Database) -> None:
    parity = _derived()["stock_parity"]
    database.replace_table("stock_parity", parity)
    bad = parity.copy()
    bad.loc[0, "unexplained_e5"] += 1  # explained + unexplained no longer equals variance
    with pytest.raises(StorageError, match="stock_parity: frame refused, nothing written"):
        database.replace_table("stock_parity", bad)
    with pytest.raises(StorageError, match="no table named"):
        database.replace_table("nope", parity)
    assert len(database.read_table("stock_parity")) == len(parity)


def _wms_raw(n: int, generation: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "wms_sku": [f"SKU{i:06d}" for i in range(n)],
            "wms_warehouse_id": [1] * n,
            "level": [Decimal(generation)] * n,
            "quarantine": [Decimal("0.00001")] * n,
            "allocated": [Decimal(0)] * n,
            "snapshot_at": [T0] * n,
        }
    )


def test_raw_table_exact_decimals_and_failure_mid_write_rolls_back(database: Database) -> None:
    database.replace_table("wms_stock", _wms_raw(10, 7))
    back = database.read_table("wms_stock")
    assert back["quarantine"].tolist() == [Decimal("0.00001")] * 10
    dup = pd.concat([_wms_raw(10, 8), _wms_raw(1, 8)], ignore_index=True)  # a duplicate key, at the end
    with pytest.raises(StorageError, match="wms_stock: write failed, previous table kept"):
        database.replace_table("wms_stock", dup)
    after = database.read_table("wms_stock")
    assert len(after) == 10 and set(after["level"]) == {Decimal(7)}
    with pytest.raises(StorageError, match="missing columns"):
        database.replace_table("wms_stock", _wms_raw(1, 1).drop(columns=["allocated"]))
    with pytest.raises(TypeError, match="binary float"):
        database.replace_table("wms_stock", _wms_raw(1, 1).assign(level=[1.5]))


def test_a_reader_never_sees_half_a_table(database: Database, db_url: DbTarget) -> None:
    n = 3000
    database.replace_table("wms_stock", _wms_raw(n, 0))
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        db = db_url.database()
        try:
            while not stop.is_set():
                with db.read() as conn:
                    rows = conn.execute(sa.select(tables.wms_stock.c.level)).scalars().all()
                seen.append((len(rows), len(set(rows))))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    t = threading.Thread(target=reader)
    t.start()
    for gen in range(1, 6):
        database.replace_table("wms_stock", _wms_raw(n, gen))
    stop.set()
    t.join()
    assert errors == []
    assert seen and all(s == (n, 1) for s in seen), [s for s in seen if s != (n, 1)][:5]


POSTING = {
    "order_id": 3,
    "document_no": "SO0001003",
    "line_id": 31,
    "sku": "CANDLE-FIG",
    "warehouse": "BRISTOL",
    "quantity": Decimal("12"),
}


def _postings(n: int) -> list[dict]:
    return [{**POSTING, "dedupe_key": f"wms:SO{i}:1", "line_id": i} for i in range(n)]


def test_outbox_insert_if_absent(database: Database) -> None:
    assert database.outbox_add(_postings(3), now=T0) == ["wms:SO0:1", "wms:SO1:1", "wms:SO2:1"]
    assert database.outbox_add(_postings(4), now=T0) == ["wms:SO3:1"]
    rows = database.outbox_rows()
    assert [r["state"] for r in rows] == ["pending"] * 4
    assert rows[0]["quantity"] == Decimal(12)
    with pytest.raises(StorageError, match=r"posting 0 \(k\).*quantity"):
        database.outbox_add([{**POSTING, "dedupe_key": "k", "quantity": 1.5}], now=T0)


def test_two_workers_never_claim_the_same_row(database: Database, db_url: DbTarget) -> None:
    database.outbox_add(_postings(60), now=T0)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        db = db_url.database()
        try:
            while True:
                rows = db.outbox_claim(name, limit=4, now=T0 + timedelta(seconds=1))
                if not rows:
                    return
                claimed[name] += [r["id"] for r in rows]
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not set(claimed["a"]) & set(claimed["b"])
    assert len(claimed["a"]) + len(claimed["b"]) == 60
    assert all(r["state"] == "posting" and r["attempts"] == 1 for r in database.outbox_rows())


def test_dead_worker_lease_expires_and_posting_twice_is_a_no_op(database: Database) -> None:
    database.outbox_add(_postings(1), now=T0)
    lease = timedelta(seconds=60)
    (first,) = database.outbox_claim("w1", lease=lease, now=T0)
    # w1 dies. Before the lease runs out nobody can take the row.
    assert database.outbox_claim("w2", lease=lease, now=T0 + timedelta(seconds=30)) == []
    (again,) = database.outbox_claim("w2", lease=lease, now=T0 + timedelta(seconds=61))
    assert (again["claimed_by"], again["attempts"]) == ("w2", 2)
    assert again["claim_token"] != first["claim_token"]
    # the dead worker's stale claim can no longer defer the row
    assert database.outbox_fail("wms:SO0:1", first["claim_token"], "lock", "x", POLICY) is None
    assert database.outbox_mark_posted("wms:SO0:1", now=T0 + timedelta(seconds=62)) is True
    assert database.outbox_mark_posted("wms:SO0:1", now=T0 + timedelta(seconds=99)) is False
    (row,) = database.outbox_rows()
    assert (row["state"], row["posted_at"]) == ("posted", T0 + timedelta(seconds=62))
    assert database.outbox_claim("w3", now=T0 + timedelta(hours=5)) == []


def test_failures_defer_then_stick_with_an_exception(database: Database) -> None:
    database.outbox_add(_postings(2), now=T0)
    a, b = database.outbox_claim("w", now=T0)
    d = database.outbox_fail(a["dedupe_key"], a["claim_token"], "lock", "record in use", POLICY, now=T0)
    assert d is not None and d.state == "deferred" and d.next_attempt_at is not None
    assert database.outbox_claim("w", now=d.next_attempt_at - timedelta(seconds=1)) == []
    (again,) = database.outbox_claim("w", now=d.next_attempt_at)
    late = T0 + timedelta(minutes=POLICY.lock_deadline_minutes)
    stuck = database.outbox_fail(
        again["dedupe_key"], again["claim_token"], "lock", "record in use", POLICY, now=late
    )
    assert stuck is not None and stuck.state == "stuck"
    refused = database.outbox_fail(
        b["dedupe_key"], b["claim_token"], "refused", "order on hold", POLICY, now=T0
    )
    assert refused is not None and refused.state == "stuck"
    exc = {e["record"]: e for e in database.exceptions()}
    assert exc[a["dedupe_key"]]["owner"] == "operations"
    assert exc[b["dedupe_key"]]["owner"] == "finance"
    assert exc[b["dedupe_key"]]["context"]["quantity"] == Decimal(12)
    assert database.outbox_retry(b["dedupe_key"], now=late) is True
    assert [r["dedupe_key"] for r in database.outbox_claim("w", now=late)] == [b["dedupe_key"]]


def test_exceptions_keep_first_seen_and_resolve(database: Database) -> None:
    database.record_exception("orphan_despatch", "wms:X:1", {"q": Decimal("1.5")}, "operations", now=T0)
    later = T0 + timedelta(hours=3)
    database.record_exception("orphan_despatch", "wms:X:1", {"q": Decimal("2")}, "operations", now=later)
    database.record_exception("orphan_despatch", "wms:Y:1", {}, "operations", now=later)
    (x, _y) = database.exceptions()
    assert (x["first_seen"], x["last_seen"], x["context"]) == (T0, later, {"q": Decimal(2)})
    assert database.resolve_exceptions("orphan_despatch", ["wms:Y:1"], now=later) == 1
    assert [e["record"] for e in database.exceptions()] == ["wms:Y:1"]
    with pytest.raises(StorageError, match="owner"):
        database.record_exception("k", "r", {}, "sales")


def test_cursors_quarantine_and_manifests(database: Database) -> None:
    assert database.get_cursor("wms.despatches") is None
    database.set_cursor("wms.despatches", "100", now=T0)
    database.set_cursor("wms.despatches", "250", now=T0)
    assert database.get_cursor("wms.despatches") == "250"
    database.quarantine("wms/Order/List", "negative quantity", {"ID": 7, "Quantity": Decimal(-1)}, now=T0)
    with database.read() as conn:
        (q,) = conn.execute(sa.select(tables.wms_quarantine)).all()
    assert q.reason == "negative quantity" and '"Quantity": -1' in q.raw
    order = SageOrder.model_validate(
        {
            "id": 6,
            "document_no": "SO0001006",
            "lines": [
                {
                    "id": 1,
                    "line_type": "EnumLineTypeStandard",
                    "code": "HOODIE-NVY-M",
                    "product_type": "Stock",
                    "warehouse_name": "LEEDS",
                    "line_quantity": 1,
                    "selling_unit_price": "45",
                },
                {
                    "id": 2,
                    "line_type": "EnumLineTypeStandard",
                    "code": "TSHIRT-WHT-L",
                    "product_type": "Stock",
                    "warehouse_name": "BRISTOL",
                    "line_quantity": 1,
                    "selling_unit_price": "18",
                },
                {
                    "id": 3,
                    "line_type": "EnumLineTypeCharge",
                    "line_quantity": 1,
                    "selling_unit_price": "4.99",
                },
            ],
        }
    )
    plan = build_manifests(order, POLICY)
    assert database.save_manifest_plan(plan, now=T0) == ["SO0001006", "SO0001006-2"]
    assert database.save_manifest_plan(plan, now=T0) == []
    assert database.mark_manifest_sent("SO0001006-2", 77, now=T0) is True
    assert database.mark_manifest_sent("SO0001006-2", 77, now=T0) is False
