"""The outbox retry sensor on a real outbox (SQLite under tmp_path), driven by the storage layer's own
operations: deferred rows come due, a repeated tick asks for the same run, a new attempt a new one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from sage_wms_pipeline.defs.resources import ParityDatabase
from sage_wms_pipeline.defs.sensors import retry
from sage_wms_pipeline.domain.policy import validate_policy

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
POLICY = validate_policy({"lock_deadline_minutes": 120, "outbox": {"backoff_base_seconds": 60}})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def parity_db(request: pytest.FixtureRequest, tmp_path: Path) -> ParityDatabase:
    if request.param == "postgres":
        from sage_wms_pipeline_tests.defs.conftest import POSTGRES_URL

        return ParityDatabase(url=POSTGRES_URL, db_schema=request.getfixturevalue("postgres_schema"))
    return ParityDatabase(url=f"sqlite:///{tmp_path / 'pipeline.sqlite'}")


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive UTC, PostgreSQL aware datetimes.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def clock(monkeypatch) -> list[datetime]:
    now = [T0]
    monkeypatch.setattr(retry, "_now", lambda: now[0])
    return now


def _add(parity_db: ParityDatabase, *keys: str, at: datetime = T0) -> None:
    parity_db.database().outbox_add(
        [
            {
                "dedupe_key": k,
                "order_id": 1000 + i,
                "document_no": f"SO000{1000 + i}",
                "line_id": i,
                "sku": "MUG-STONE",
                "warehouse": "LEEDS",
                "quantity": Decimal(1),
            }
            for i, k in enumerate(keys)
        ],
        now=at,
    )


def _tick(parity_db: ParityDatabase, instance: dg.DagsterInstance) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources={"parity_db": parity_db}) as ctx:
        return retry.outbox_retry_sensor(ctx)


def _lock(parity_db: ParityDatabase, key: str, at: datetime) -> None:
    db = parity_db.database()
    (row,) = [r for r in db.outbox_claim("worker", now=at) if r["dedupe_key"] == key]
    decision = db.outbox_fail(
        key, row["claim_token"], "lock", "record in use by another user", POLICY, now=at
    )
    assert decision is not None and decision.state == "deferred"


def test_nothing_due_skips(parity_db, clock, instance):
    result = _tick(parity_db, instance)
    assert not result.run_requests and "no outbox rows due" in result.skip_reason.skip_message
    _add(parity_db, "fresh")  # just added: the posting run that added it will post it
    assert not _tick(parity_db, instance).run_requests


def test_pending_rows_left_behind_are_picked_up(parity_db, clock, instance):
    _add(parity_db, "a", "b")
    clock[0] = T0 + retry.PENDING_GRACE + timedelta(seconds=1)
    result = _tick(parity_db, instance)
    (request,) = result.run_requests
    rows = retry.due_rows(parity_db.database().engine, clock[0])
    assert request.run_key == retry.run_key_for(rows, clock[0])
    assert request.tags["sage_wms/due_rows"] == "2"


def test_deferred_row_is_due_after_its_backoff_and_keyed_by_attempt(parity_db, clock, instance):
    _add(parity_db, "locked")
    _lock(parity_db, "locked", T0)
    db = parity_db.database()
    (row,) = db.outbox_rows(state="deferred")
    clock[0] = _aware(row["next_attempt_at"]) - timedelta(seconds=1)
    assert not _tick(parity_db, instance).run_requests  # not due yet

    clock[0] = _aware(row["next_attempt_at"]) + timedelta(seconds=1)
    first = _tick(parity_db, instance).run_requests[0]
    assert first.run_key.startswith("outbox-retry-")
    # A repeated tick asks for the same run; the daemon will not launch it twice.
    assert _tick(parity_db, instance).run_requests[0].run_key == first.run_key

    # The retry met the lock again: attempt 2 is a different run.
    _lock(parity_db, "locked", clock[0])
    (row,) = db.outbox_rows(state="deferred")
    assert row["attempts"] == 2
    clock[0] = _aware(row["next_attempt_at"]) + timedelta(seconds=1)
    second = _tick(parity_db, instance).run_requests[0]
    assert second.run_key != first.run_key


def test_rows_left_due_by_a_run_that_never_touched_them_are_retried_next_round(parity_db, clock, instance):
    _add(parity_db, "a")
    clock[0] = T0 + timedelta(minutes=10)
    key = _tick(parity_db, instance).run_requests[0].run_key
    clock[0] += retry.RETRY_ROUND
    assert _tick(parity_db, instance).run_requests[0].run_key != key


def test_waits_while_a_posting_run_is_in_flight(parity_db, clock, instance):
    _add(parity_db, "a")
    clock[0] = T0 + timedelta(minutes=10)
    instance.add_run(
        DagsterRun(job_name="despatch_posting_job", run_id="r1", status=dg.DagsterRunStatus.STARTED)
    )
    try:
        result = _tick(parity_db, instance)
        assert not result.run_requests and "in flight" in result.skip_reason.skip_message
    finally:
        instance.delete_run("r1")


def test_a_worker_that_died_mid_post_leaves_its_rows_due_after_the_lease(parity_db, clock, instance):
    _add(parity_db, "a")
    db = parity_db.database()
    db.outbox_claim("dead-worker", lease=timedelta(minutes=5), now=T0)
    clock[0] = T0 + timedelta(minutes=4)
    assert not _tick(parity_db, instance).run_requests
    clock[0] = T0 + timedelta(minutes=6)
    assert _tick(parity_db, instance).run_requests
    assert [r.state for r in retry.due_rows(db.engine, clock[0])] == ["posting"]
