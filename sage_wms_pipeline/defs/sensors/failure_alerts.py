"""Alert sensors: a failed run, or a check that failed in a run that succeeded, goes to the webhook.

A blocking check failing with ERROR fails its run, so it is reported by the run-failure sensor
(with the failed steps and every failed check of that run). Checks that fail without failing the
run (WARN, or non-blocking) are reported by the check-failure sensor when the run succeeds. Each
alert names what failed and the records involved (the checks put them in their `records` metadata).
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


def failed_check_items(instance: dg.DagsterInstance, run_id: str) -> list[AlertItem]:
    """Every check evaluation in the run that did not pass, with its summary and records."""
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
        items.append(
            AlertItem(
                name=f"{evaluation.asset_key.to_user_string()} › {evaluation.check_name}",
                detail=detail,
                level=level,
                records=_records(metadata),
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
    description="Sends checks that failed in successful runs (WARN or non-blocking) to the alert webhook.",
)
def check_failure_alert_sensor(context: dg.RunStatusSensorContext) -> dg.SkipReason | None:
    run = context.dagster_run
    items = failed_check_items(context.instance, run.run_id)
    if not items:
        return dg.SkipReason(f"run {run.run_id[:8]}: every check passed")
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
