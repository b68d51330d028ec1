"""Alert sensors: a failed run, or a check that failed in a run that succeeded, goes to the webhook.

A blocking check failing with ERROR fails its run, so it is reported by the run-failure sensor
(with the failed steps and every failed check of that run). Checks that fail without failing the
run (WARN, or non-blocking) are reported by the check-failure sensor when the run succeeds. Each
alert names what failed and the records involved (the checks put them in their `records` metadata).

Checks run every few minutes with the stock and manifest jobs, and a known difference (say free
stock diverging while despatches are in flight) would otherwise page someone every five minutes.
So the check-failure sensor only sends a check whose verdict or records changed since its previous
evaluation; the daily sync check (`DIGEST_JOBS`) sends every failing check, changed or not, as the
morning digest. Likewise a job failing the same way run after run (Sage down, credentials expired)
alerts on its first failure, then once every `FAILURE_REMINDER` while it stays so; a different
failure alerts at once, and the job's first success after failing sends a recovery notice.

Set `SAGE_WMS_DAGSTER_URL` (e.g. http://127.0.0.1:3000) to add a link to the run.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from dagster import DagsterEventType

from sage_wms_pipeline.defs.alerts import Alert, AlertItem, AlertLevel, send_alert
from sage_wms_pipeline.defs.schedules import sensor_status

DAGSTER_URL_ENV = "SAGE_WMS_DAGSTER_URL"
MAX_ERROR_CHARS = 300
DIGEST_JOBS = frozenset({"sync_check_job"})
_HISTORY = 25
_COMPLETED = ("SUCCEEDED", "FAILED")
FAILURE_REMINDER = timedelta(hours=1)


def run_link(run_id: str) -> str | None:
    base = os.environ.get(DAGSTER_URL_ENV)
    return f"{base.rstrip('/')}/runs/{run_id}" if base else None


def _metadata_text(value: Any) -> str | None:
    if value is None:
        return None
    for attr in ("text", "md_str", "value"):
        if hasattr(value, attr):
            return str(getattr(value, attr))
    return str(value)


def _records(metadata: dict[str, Any]) -> list[str]:
    value = metadata.get("records")
    data = getattr(value, "data", value)
    return [str(r) for r in data] if isinstance(data, list) else []


def _verdict(evaluation: Any) -> tuple[Any, ...]:
    metadata = dict(evaluation.metadata or {})
    count = getattr(metadata.get("records_at_fault"), "value", None)
    return (evaluation.passed, evaluation.severity, tuple(_records(metadata)), count)


def _previous_evaluation(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, run_id: str) -> Any:
    """The check's last completed evaluation before the one in `run_id` (None if there is none)."""
    history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=_HISTORY)
    past_current = False
    for record in history:  # newest first
        if record.run_id == run_id:
            past_current = True
            continue
        if not past_current or record.status.value not in _COMPLETED:
            continue
        event = record.event.dagster_event if record.event is not None else None
        if event is not None:
            return event.event_specific_data
    return None


def failed_check_items(instance: dg.DagsterInstance, run_id: str) -> list[AlertItem]:
    """Every check evaluation in the run that did not pass, with its summary and records, marked
    `unchanged` when the check's previous evaluation gave the same verdict on the same records."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    items: list[AlertItem] = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event is not None else None
        if evaluation is None or getattr(evaluation, "passed", True):
            continue
        metadata = dict(evaluation.metadata or {})
        detail = _metadata_text(metadata.get("summary")) or evaluation.description or "check did not pass"
        level: AlertLevel = "ERROR" if evaluation.severity == dg.AssetCheckSeverity.ERROR else "WARN"
        key = dg.AssetCheckKey(evaluation.asset_key, evaluation.check_name)
        previous = _previous_evaluation(instance, key, run_id)
        items.append(
            AlertItem(
                name=f"{evaluation.asset_key.to_user_string()} › {evaluation.check_name}",
                detail=detail,
                level=level,
                records=_records(metadata),
                unchanged=previous is not None and _verdict(previous) == _verdict(evaluation),
            )
        )
    return items


def _innermost(error: Any) -> Any:
    # Dagster wraps the user's exception; its own message is the innermost cause.
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    return error


def failure_signature(
    instance: dg.DagsterInstance, run_id: str, check_items: list[AlertItem] | None = None
) -> tuple[Any, ...]:
    """What a failed run's alert is about, less what differs every time (messages carry ids and
    times): its failed steps with their error types, and its failed checks with their records
    (`check_items`, when the caller has already read them)."""
    if check_items is None:
        check_items = failed_check_items(instance, run_id)
    steps = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = _innermost(getattr(event.event_specific_data, "error", None)) if event else None
        steps.append((event.step_key if event else None, getattr(error, "cls_name", None)))
    checks = [(i.name, i.level, tuple(i.records)) for i in check_items]
    return tuple(sorted(steps, key=str)), tuple(sorted(checks, key=str))


def _earlier_runs(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[Any]:
    """The job's completed runs created before `run`, newest first (at most `_HISTORY`)."""
    records = instance.get_run_records(
        dg.RunsFilter(
            job_name=run.job_name,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=_HISTORY + 1,
    )
    current = instance.get_run_record_by_id(run.run_id)
    created = current.create_timestamp if current is not None else None
    return [
        r
        for r in records
        if r.dagster_run.run_id != run.run_id and (created is None or r.create_timestamp <= created)
    ][:_HISTORY]


def failure_streak(
    instance: dg.DagsterInstance, run: dg.DagsterRun, check_items: list[AlertItem] | None = None
) -> list[Any]:
    """The run records, newest first, of the job's runs just before `run` that failed the same way."""
    signature = failure_signature(instance, run.run_id, check_items)
    streak = []
    for record in _earlier_runs(instance, run):
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        if failure_signature(instance, record.dagster_run.run_id) != signature:
            break
        streak.append(record)
    return streak


def reminder_due(streak_started: datetime, previous: datetime, now: datetime) -> bool:
    """Whether a repeat failure at `now` starts a new reminder period that `previous` did not."""
    period = FAILURE_REMINDER.total_seconds()
    return (now - streak_started).total_seconds() // period > (
        previous - streak_started
    ).total_seconds() // period


def step_failure_items(context: dg.RunFailureSensorContext) -> list[AlertItem]:
    items = []
    for event in context.get_step_failure_events():
        error = _innermost(getattr(event.event_specific_data, "error", None))
        message = (error.message if error is not None else event.message or "step failed").strip()
        items.append(
            AlertItem(name=f"step {event.step_key}", detail=message[:MAX_ERROR_CHARS], level="FAILURE")
        )
    return items


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=sensor_status(),
    description="Sends failed runs (failed steps, failed checks and their records) to the alert webhook; "
    "a job failing the same way again is reminded hourly, not every run.",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
    run = context.dagster_run
    title = f"Run failed: {run.job_name}"
    failed_checks = failed_check_items(context.instance, run.run_id)
    streak = failure_streak(context.instance, run, failed_checks)
    if streak:
        current = context.instance.get_run_record_by_id(run.run_id)
        started, previous = streak[-1].create_timestamp, streak[0].create_timestamp
        now = current.create_timestamp if current is not None else previous
        if not reminder_due(started, previous, now):
            return dg.SkipReason(
                f"run {run.run_id[:8]} failed as the {len(streak)} run(s) of {run.job_name} before it did; "
                f"reminding every {FAILURE_REMINDER}"
            )
        title = (
            f"Run still failing: {run.job_name} "
            f"({len(streak) + 1} runs in a row since {started:%Y-%m-%d %H:%M} UTC)"
        )
    items = step_failure_items(context) + failed_checks
    if not items:
        message = context.failure_event.message if context.failure_event else "run failed"
        items = [AlertItem(name="run", detail=(message or "run failed")[:MAX_ERROR_CHARS], level="FAILURE")]
    send_alert(
        Alert(
            title=title,
            level="FAILURE",
            items=items,
            run_id=run.run_id,
            link=run_link(run.run_id),
        ),
        logger=context.log,
    )
    return None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="check_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=sensor_status(),
    description=(
        "Sends checks that failed in successful runs (WARN or non-blocking) to the alert webhook when "
        "their verdict or records changed (the daily sync check sends every failing check), and a "
        "recovery notice for a job's first success after failed runs."
    ),
)
def check_failure_alert_sensor(context: dg.RunStatusSensorContext) -> dg.SkipReason | None:
    run = context.dagster_run
    failed_before = 0
    for record in _earlier_runs(context.instance, run):
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failed_before += 1
    if failed_before:
        # Failure alerts for this job were muted while it kept failing: say it is over.
        send_alert(
            Alert(
                title=f"Recovered: {run.job_name} succeeded after {failed_before} failed run(s)",
                level="RECOVERED",
                run_id=run.run_id,
                link=run_link(run.run_id),
            ),
            logger=context.log,
        )
    failed = failed_check_items(context.instance, run.run_id)
    if not failed:
        return dg.SkipReason(f"run {run.run_id[:8]}: every check passed")
    digest = run.job_name in DIGEST_JOBS
    items = failed if digest else [i for i in failed if not i.unchanged]
    if not items:
        return dg.SkipReason(f"run {run.run_id[:8]}: {len(failed)} check(s) still failing, unchanged")
    worst: AlertLevel = "ERROR" if any(i.level == "ERROR" for i in items) else "WARN"
    send_alert(
        Alert(
            title=f"{len(items)} check(s) failed in {run.job_name}",
            level=worst,
            items=items,
            run_id=run.run_id,
            link=run_link(run.run_id),
        ),
        logger=context.log,
    )
    return None
