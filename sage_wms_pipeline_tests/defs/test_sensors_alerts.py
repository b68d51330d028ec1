"""Alert sensors and the webhook sender, against a real HTTP receiver on loopback.

Runs are real (an ephemeral Dagster instance): a job whose blocking check fails with ERROR, and one
whose check only warns. The sensors are evaluated on those runs and must post a Slack/Teams-style
`{"text": ...}` message naming the failed step or check and the records it listed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.defs.alerts import WEBHOOK_ENV, Alert, AlertDeliveryError, AlertItem, send_alert
from sage_wms_pipeline.defs.sensors.failure_alerts import (
    check_failure_alert_sensor,
    failed_check_items,
    reminder_due,
    run_failure_alert_sensor,
)


class Receiver:
    """A webhook endpoint: records JSON bodies; answers `status` (then 200 after `fail_times`)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        self.fail_times = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if receiver.fail_times > 0:
                    receiver.fail_times -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.bodies.append(jsonutil.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    # One instance for the module: creating one costs seconds, and runs never interfere.
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def receiver(monkeypatch) -> Iterator[Receiver]:
    r = Receiver()
    monkeypatch.setenv(WEBHOOK_ENV, r.url)
    yield r
    r.close()


# ------------------------------------------------------------------------- a small failing graph


@dg.asset
def parity_like() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 3})


@dg.asset_check(asset=parity_like, blocking=True)
def drift_error() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "summary": "2 line(s) outside tolerance (1 material)",
            "records": dg.MetadataValue.json(["THROW-WOOL@LEEDS", "MUG-STONE@BRISTOL"]),
        },
    )


@dg.asset(deps=[parity_like])
def valuation_like() -> None:
    return None


@dg.asset
def manifests_like() -> None:
    return None


@dg.asset_check(asset=manifests_like)
def totals_warn() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"summary": "1 of 4 order(s) do not tie", "records": dg.MetadataValue.json(["SO0001003"])},
    )


@dg.asset_check(asset=manifests_like)
def fine() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@dg.asset
def broken_step() -> None:
    raise RuntimeError("Sage answered 503 three times for sop_orders")


def _run(instance: dg.DagsterInstance, assets: list) -> dg.ExecuteInJobResult:
    return dg.materialize(assets, instance=instance, raise_on_error=False)


def _failure_context(
    instance: dg.DagsterInstance, result: dg.ExecuteInJobResult
) -> dg.RunFailureSensorContext:
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()


def test_blocking_check_error_fails_the_run_and_the_alert_names_the_records(receiver, instance):
    result = _run(instance, [parity_like, drift_error, valuation_like])
    assert not result.success
    run_failure_alert_sensor(_failure_context(instance, result))
    assert len(receiver.bodies) == 1
    text = receiver.bodies[0]["text"]
    assert text.startswith(":rotating_light: *Run failed: __ephemeral_asset_job__*")
    assert "parity_like › drift_error* [ERROR]: 2 line(s) outside tolerance (1 material)" in text
    assert "`THROW-WOOL@LEEDS`, `MUG-STONE@BRISTOL`" in text


def test_failed_step_is_named_with_its_error(receiver, instance):
    result = _run(instance, [broken_step])
    run_failure_alert_sensor(_failure_context(instance, result))
    text = receiver.bodies[0]["text"]
    assert "*step broken_step* [FAILURE]" in text
    assert "Sage answered 503 three times for sop_orders" in text


def test_warning_checks_in_a_successful_run_are_alerted_and_passing_ones_are_not(receiver, instance):
    result = _run(instance, [manifests_like, totals_warn, fine])
    assert result.success
    items = failed_check_items(instance, result.run_id)
    assert [(i.name, i.level, list(i.records)) for i in items] == [
        ("manifests_like › totals_warn", "WARN", ["SO0001003"])
    ]
    ctx = dg.build_run_status_sensor_context(
        sensor_name="check_failure_alert_sensor",
        dagster_event=next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS"),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    )
    assert check_failure_alert_sensor(ctx) is None
    # The module's earlier runs of this job failed: the recovery notice comes first, then the checks.
    assert receiver.bodies[0]["text"].startswith(":white_check_mark: *Recovered: __ephemeral_asset_job__")
    assert receiver.bodies[-1]["text"].startswith(":warning: *1 check(s) failed in __ephemeral_asset_job__*")
    assert "`SO0001003`" in receiver.bodies[-1]["text"]


def test_a_clean_run_sends_nothing(receiver, instance):
    result = _run(instance, [manifests_like, fine])
    ctx = dg.build_run_status_sensor_context(
        sensor_name="check_failure_alert_sensor",
        dagster_event=next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS"),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    )
    assert isinstance(check_failure_alert_sensor(ctx), dg.SkipReason)
    assert receiver.bodies == []


def test_sender_retries_5xx_then_delivers(receiver):
    receiver.fail_times = 2
    assert send_alert(Alert(title="t", level="WARN", items=[AlertItem("x", "y")]))
    assert len(receiver.bodies) == 1


def test_sender_raises_without_leaking_the_url(receiver):
    receiver.fail_times = 10
    with pytest.raises(AlertDeliveryError) as info:
        send_alert(Alert(title="t", level="ERROR"))
    assert "secret-token" not in str(info.value) and "503" in str(info.value)


def test_without_a_webhook_the_alert_is_logged(monkeypatch, caplog):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    with caplog.at_level(logging.WARNING):
        sent = send_alert(Alert(title="Run failed: x", level="FAILURE", items=[AlertItem("step a", "boom")]))
    assert sent is False
    assert "Run failed: x" in caplog.text and "boom" in caplog.text


def test_payload_is_plain_text_json_and_lists_at_most_fifteen_records():
    alert = Alert(
        title="drift",
        level="ERROR",
        items=[
            AlertItem(
                "stock_parity › inventory_drift", "20 lines", "ERROR", [f"SKU{i}@LEEDS" for i in range(20)]
            )
        ],
        run_id="0123456789abcdef",
        link="http://127.0.0.1:3000/runs/0123456789abcdef",
    )
    payload = alert.payload()
    assert list(payload) == ["text"]
    assert "`SKU14@LEEDS` … and 5 more" in payload["text"]
    assert "(run `01234567`)" in payload["text"]
    assert "<http://127.0.0.1:3000/runs/0123456789abcdef|Open in Dagster>" in payload["text"]
    # What a Slack or Teams incoming webhook is sent: the JSON round-trips as is.
    assert jsonutil.loads(jsonutil.dumps(payload)) == payload
    assert httpx.Request("POST", "http://x", json=payload).headers["content-type"] == "application/json"


# ------------------------------------------------------------------- no paging on repeat failures

MOVING_RECORDS: list[str] = []


@dg.asset_check(asset=manifests_like)
def moving_target() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "summary": f"{len(MOVING_RECORDS)} line(s) diverge",
            "records": dg.MetadataValue.json(list(MOVING_RECORDS)),
            "records_at_fault": len(MOVING_RECORDS),
        },
    )


def _after_success(instance: dg.DagsterInstance, run_id: str) -> dg.SkipReason | None:
    run = instance.get_run_by_id(run_id)
    success = next(
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records
    )
    ctx = dg.build_run_status_sensor_context(
        sensor_name="check_failure_alert_sensor",
        dagster_event=success,
        dagster_instance=instance,
        dagster_run=run,
    )
    return check_failure_alert_sensor(ctx)


def test_an_unchanged_failure_is_sent_once_a_change_again_and_the_daily_digest_always(receiver):
    with dg.instance_for_test() as instance:
        sent = []
        for records in (["MUG-STONE@LEEDS"], ["MUG-STONE@LEEDS"], ["MUG-STONE@LEEDS", "THROW-WOOL@LEEDS"]):
            MOVING_RECORDS[:] = records
            before = len(receiver.bodies)
            result = _after_success(instance, _run(instance, [manifests_like, moving_target]).run_id)
            sent.append(len(receiver.bodies) > before)
            if not sent[-1]:
                assert "still failing, unchanged" in result.skip_message
        assert sent == [True, False, True]

        # The morning digest repeats what is still failing, marked as unchanged.
        digest_job = dg.define_asset_job("sync_check_job", selection=dg.AssetSelection.all_asset_checks())
        defs = dg.Definitions(assets=[manifests_like], asset_checks=[moving_target], jobs=[digest_job])
        run = defs.resolve_job_def("sync_check_job").execute_in_process(instance=instance)
        assert _after_success(instance, run.run_id) is None
    text = receiver.bodies[-1]["text"]
    assert "failed in sync_check_job" in text and "(unchanged since the last run)" in text


# ------------------------------------------------------------- a job failing the same way, run after run

SAGE_ERROR = {"kind": RuntimeError}


@dg.asset
def sage_reader() -> None:
    raise SAGE_ERROR["kind"](f"Sage answered 503 (request {uuid.uuid4().hex[:8]})")


def test_a_repeated_failure_alerts_once_a_different_one_again_and_recovery_is_announced(receiver):
    with dg.instance_for_test() as instance:
        defs = dg.Definitions(assets=[sage_reader], jobs=[dg.define_asset_job("ingest_job", [sage_reader])])
        job = defs.resolve_job_def("ingest_job")

        def run_and_alert() -> dg.SkipReason | None:
            result = job.execute_in_process(instance=instance, raise_on_error=False)
            if result.success:
                return _after_success(instance, result.run_id)
            return run_failure_alert_sensor(_failure_context(instance, result))

        SAGE_ERROR["kind"] = RuntimeError
        assert run_and_alert() is None  # first failure: sent
        repeat = run_and_alert()  # same step, same error type, another message: not sent again
        assert (
            isinstance(repeat, dg.SkipReason)
            and "failed as the 1 run(s) of ingest_job" in repeat.skip_message
        )
        assert len(receiver.bodies) == 1 and receiver.bodies[0]["text"].startswith(
            ":rotating_light: *Run failed: ingest_job*"
        )

        SAGE_ERROR["kind"] = ConnectionError  # failing differently: sent at once
        assert run_and_alert() is None
        assert len(receiver.bodies) == 2
        assert "ConnectionError: Sage answered 503" in receiver.bodies[1]["text"]

        SAGE_ERROR["kind"] = None  # type: ignore[assignment]
        with_fix = dg.Definitions(
            assets=[dg.asset(name="sage_reader")(lambda: None)],
            jobs=[dg.define_asset_job("ingest_job", ["sage_reader"])],
        )
        result = with_fix.resolve_job_def("ingest_job").execute_in_process(instance=instance)
        assert isinstance(_after_success(instance, result.run_id), dg.SkipReason)  # no checks failed
    assert receiver.bodies[-1]["text"].startswith(
        ":white_check_mark: *Recovered: ingest_job succeeded after 3 failed run(s)*"
    )


def test_a_failure_that_persists_is_reminded_once_an_hour():
    start = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    at = [start + timedelta(minutes=m) for m in (0, 5, 55, 60, 65, 119, 121)]
    reminders = [reminder_due(start, prev, now) for prev, now in itertools.pairwise(at)]
    assert reminders == [False, False, True, False, False, True]
