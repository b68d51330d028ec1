"""Checks and the despatch sensor on the real asset graph, both simulators over HTTP (demo data,
warehouse kept quiet so the only differences are the planted ones).

The sensor's run request is executed as the despatch_posting_job it names; a repeated tick and a
cursor reset ask for the same run key, and running the job again posts nothing twice. The checks then
read the tables exactly as the real assets wrote them.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import dagster as dg

from sage_wms_pipeline.defs import jobs
from sage_wms_pipeline.defs.checks import contracts, finance, fulfilment
from sage_wms_pipeline.defs.sensors.despatch import wms_despatch_sensor
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline.storage import tables
from sage_wms_pipeline_tests.defs.conftest import INGEST, Pipeline, quiet


def _tick(pipeline: Pipeline, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(cursor=cursor, resources={"wms": pipeline.resources["wms"]}) as ctx:
        return wms_despatch_sensor(ctx)


def _sage_despatched(pipeline: Pipeline) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    with pipeline.resources["sage"].client() as client:
        for order in client.list("sop_orders", expand="lines"):
            for line in order.get("lines") or []:
                out[order["document_no"]] += Decimal(line.get("despatch_receipt_quantity") or 0)
    return dict(out)


def _post_until_settled(pipeline: Pipeline) -> None:
    """Run the posting job; rows a transient fault deferred (a timeout on a loaded machine) are made
    due at once and posted again, as the retry sensor would once their backoff has passed."""
    out = tables.despatch_outbox
    for _ in range(4):
        pipeline.run_job(jobs.despatch_posting_job)
        if not pipeline.db.outbox_rows(state="deferred"):
            return
        with pipeline.db.engine.begin() as conn:
            conn.execute(
                out.update().where(out.c.state == "deferred").values(next_attempt_at=out.c.created_at)
            )
    raise AssertionError(f"postings still deferred: {pipeline.db.outbox_rows(state='deferred')}")


def _check(fn: dg.AssetChecksDefinition, pipeline: Pipeline) -> dg.AssetCheckResult:
    args = {"parity_db": pipeline.resources["parity_db"]}
    if "policy" in fn.required_resource_keys:
        args["policy"] = pipeline.resources["policy"]
    return fn(**args)


def test_sensor_drives_postings_once_and_the_checks_read_the_real_tables(sandbox, pipeline):
    sandbox.load(quiet(read_scenario(demo_scenario_path())))
    pipeline.materialize(*INGEST)
    pipeline.materialize("order_manifests")
    pipeline.advance_wms_clock(12 * 3600)  # the demo's orders are picked, packed and despatched

    first = _tick(pipeline, None)
    (request,) = first.run_requests
    assert int(request.tags["sage_wms/despatch_events"]) >= 2
    _post_until_settled(pipeline)
    posted = _sage_despatched(pipeline)
    assert posted["SO0001008"] > 0  # the order despatched before the scenario started

    # Repeated tick and cursor reset: the same run key, which Dagster will not launch again.
    assert [r.run_key for r in _tick(pipeline, None).run_requests] == [request.run_key]
    assert not _tick(pipeline, first.cursor).run_requests
    # Even if it were launched again, nothing is posted twice.
    pipeline.run_job(jobs.despatch_posting_job)
    assert _sage_despatched(pipeline) == posted

    pipeline.materialize(*INGEST)  # both sides as they stand after the postings
    pipeline.materialize("stock_parity", "valuation_deltas", run_config=pipeline.parity_config())

    manifests = _check(fulfilment.manifest_totals, pipeline)
    assert manifests.passed and manifests.metadata["orders_checked"].value >= 5
    stuck = _check(fulfilment.stuck_and_orphaned, pipeline)
    assert stuck.passed, stuck.metadata
    latency = _check(fulfilment.despatch_latency, pipeline)
    assert latency.metadata["postings_measured"].value >= 2
    assert latency.metadata["despatch_time_from"].value == "outbox source"
    illusion = _check(fulfilment.sync_illusion, pipeline)
    assert illusion.passed, illusion.metadata  # everything despatched is now posted in Sage
    # Drift: the check reports exactly the lines the real parity table holds out of tolerance.
    parity = pipeline.db.read_table("stock_parity")
    out = parity[~parity["within_tolerance"] & (parity["unexplained_e5"] != 0)]
    drift = _check(finance.inventory_drift, pipeline)
    assert drift.passed == out.empty
    assert drift.passed, drift.metadata  # a quiet warehouse, everything posted: nothing unexplained
    assert sorted(drift.metadata.get("records", dg.MetadataValue.json([])).data) == sorted(
        f"{r.sku}@{r.warehouse}" for r in out.itertuples()
    )
    detail = pipeline.db.read_table("valuation_deltas")
    value = _check(finance.valuation_drift, pipeline)
    assert value.passed == (detail["unexplained_value_pence"] == 0).all()
    # Structure: the tables the real assets wrote meet every contract.
    for check in [finance.gx_data_contracts, *finance.schema_checks, *contracts.contract_checks]:
        result = _check(check, pipeline)
        assert result.passed, (next(iter(check.check_keys)).name, result.metadata)
