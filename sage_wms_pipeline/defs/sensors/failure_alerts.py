"""Alert sensors: a failed run, or a check that failed in a run that succeeded, goes to the webhook.

A blocking check failing with ERROR fails its run, so it is reported by the run-failure sensor
(with the failed steps and every failed check of that run). Checks that fail without failing the
run (WARN, or non-blocking) are reported by the check-failure sensor when the run succeeds. Each
alert names what failed and the records involved (the checks put them in their `records` metadata).

Checks run every few minutes with the stock and manifest jobs, and a known difference (say free
stock diverging while despatches are in flight) would otherwise page someone every five minutes.
So the check-failure sensor only sends a check whose verdict or records changed since its previous
evaluation; the daily sync check (`DIGEST_JOBS`) sends every failing check, changed or not, as the
morning digest. Failed runs are always sent.

Set `SAGE_WMS_DAGSTER_URL` (e.g. http://127.0.0.1:3000) to add a link to the run.
"""

from __future__ import annotations

import os
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


def step_failure_items(context: dg.RunFailureSensorContext) -> list[AlertItem]:
    items = []
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        # Dagster wraps the user's exception; its own message is the innermost cause.
        while error is not None and getattr(error, "cause", None) is not None:
            error = error.cause
        message = (error.message if error is not None else event.message or "step failed").strip()
        items.append(
            AlertItem(name=f"step {event.step_key}", detail=message[:MAX_ERROR_CHARS], level="FAILURE")
        )
    return items


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=sensor_status(),
    description="Sends failed runs (failed steps, failed checks and their records) to the alert webhook.",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    items = step_failure_items(context) + failed_check_items(context.instance, run.run_id)
    if not items:
        message = context.failure_event.message if context.failure_event else "run failed"
        items = [AlertItem(name="run", detail=(message or "run failed")[:MAX_ERROR_CHARS], level="FAILURE")]
    send_alert(
        Alert(
            title=f"Run failed: {run.job_name}",
            level="FAILURE",
            items=items,
            run_id=run.run_id,
            link=run_link(run.run_id),
        ),
        logger=context.log,
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="check_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=sensor_status(),
    description=(
        "Sends checks that failed in successful runs (WARN or non-blocking) to the alert webhook when "
        "their verdict or records changed; the daily sync check sends every failing check."
    ),
)
def check_failure_alert_sensor(context: dg.RunStatusSensorContext) -> dg.SkipReason | None:
    run = context.dagster_run
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
