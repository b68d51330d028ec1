"""Retry sensor: outbox rows that are due again request a `despatch_posting_job` run.

Due means: deferred (a Sage record lock or API fault) with `next_attempt_at` passed; claimed by a
worker whose lease ran out (it died mid-post); or pending for longer than `PENDING_GRACE` (no
despatch event came along to trigger a run). The run key is the due rows' ids and attempt counts,
plus a `RETRY_ROUND` time bucket: a posting run that failed before touching the rows (say the WMS
read upstream of it failed) leaves them due with the same attempts, and without the bucket their
key would be spent forever. While a posting run is queued or in progress the sensor waits for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from sage_wms_pipeline.defs.jobs import despatch_posting_job
from sage_wms_pipeline.defs.resources import ParityDatabase
from sage_wms_pipeline.defs.schedules import sensor_status
from sage_wms_pipeline.storage import tables

PENDING_GRACE = timedelta(minutes=5)
RETRY_ROUND = timedelta(minutes=15)
MAX_ROWS = 5000
MINIMUM_INTERVAL_SECONDS = 30
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class DueRow:
    id: int
    attempts: int
    state: str
    document_no: str


def due_rows(engine: sa.Engine, now: datetime, limit: int = MAX_ROWS) -> list[DueRow]:
    o = tables.despatch_outbox
    due = sa.or_(
        sa.and_(o.c.state == "deferred", sa.or_(o.c.next_attempt_at.is_(None), o.c.next_attempt_at <= now)),
        sa.and_(o.c.state == "posting", o.c.lease_expires_at.is_not(None), o.c.lease_expires_at <= now),
        sa.and_(o.c.state == "pending", o.c.created_at <= now - PENDING_GRACE),
    )
    query = (
        sa.select(o.c.id, o.c.attempts, o.c.state, o.c.document_no).where(due).order_by(o.c.id).limit(limit)
    )
    with engine.connect() as conn:
        return [
            DueRow(int(r.id), int(r.attempts), str(r.state), str(r.document_no)) for r in conn.execute(query)
        ]


def retry_round(now: datetime) -> int:
    return int(now.timestamp() // RETRY_ROUND.total_seconds())


def run_key_for(rows: Sequence[DueRow], now: datetime) -> str:
    text = ",".join(f"{r.id}:{r.attempts}" for r in sorted(rows, key=lambda r: r.id))
    return f"outbox-retry-{hashlib.sha256(text.encode()).hexdigest()[:24]}-r{retry_round(now)}"


def _now() -> datetime:
    return datetime.now(UTC)


@dg.sensor(
    name="outbox_retry_sensor",
    job=despatch_posting_job,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=sensor_status(),
    description="Requests despatch_posting_job when deferred or abandoned outbox rows are due again.",
)
def outbox_retry_sensor(context: dg.SensorEvaluationContext, parity_db: ParityDatabase) -> dg.SensorResult:
    now = _now()
    rows = due_rows(parity_db.database().engine, now)
    if not rows:
        return dg.SensorResult(skip_reason=dg.SkipReason("no outbox rows due"))
    in_flight = context.instance.get_runs_count(
        dg.RunsFilter(job_name=despatch_posting_job.name, statuses=IN_FLIGHT)
    )
    if in_flight:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"{len(rows)} row(s) due; waiting for {in_flight} posting run(s) in flight"
            )
        )
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r.state] = by_state.get(r.state, 0) + 1
    orders = sorted({r.document_no for r in rows})
    context.log.info(f"{len(rows)} outbox row(s) due ({by_state}) for orders {', '.join(orders[:20])}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key_for(rows, now),
                tags={
                    "sage_wms/trigger": "outbox_retry_sensor",
                    "sage_wms/due_rows": str(len(rows)),
                    "sage_wms/orders": ",".join(orders[:10]) + (" …" if len(orders) > 10 else ""),
                },
            )
        ]
    )
