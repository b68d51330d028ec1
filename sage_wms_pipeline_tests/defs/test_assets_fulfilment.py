"""Fulfilment assets against the simulators: locks deferred then stuck, Sage status refusals,
orphaned shipments, and stock adjustments by route (finance proposal or Sage stocktake)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.wms.base import ManifestLine, OrderManifest
from sage_wms_pipeline.defs.resources import PolicyResource
from sage_wms_pipeline.domain.manifests import parse_order_number
from sage_wms_pipeline.domain.policy import load_policy
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline_tests.defs.conftest import INGEST, Pipeline, pipeline_resources, quiet, write_policy
from sage_wms_pipeline_tests.defs.test_end_to_end import (
    assert_sage_matches_wms_despatches,
    generated_pipeline,
    parity_by_cause,
    small_scenario,
)


def _post(url: str, body: Any) -> None:
    httpx.post(
        url, content=jsonutil.dumps(body), headers={"Content-Type": "application/json"}, timeout=30
    ).raise_for_status()


def despatched_and_queued(pipeline: Pipeline) -> None:
    pipeline.materialize(*INGEST)
    pipeline.materialize("order_manifests")
    pipeline.advance_wms_clock(8 * 3600)
    pipeline.materialize("wms_orders", "wms_despatches")


def open_exceptions(pipeline: Pipeline, kind: str) -> dict[str, dict[str, Any]]:
    return {e["record"]: e for e in pipeline.db.exceptions(open_only=True) if e["kind"] == kind}


def test_locked_order_is_deferred_while_others_post_then_stuck_past_the_deadline(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    use_outbox_policy(pipeline, tmp_path, lock_linger_seconds=0)  # left to the retry sensor at once
    despatched_and_queued(pipeline)
    docs = sorted({r["order_number"].split("-")[0] for r in pipeline.query(core.wms_despatches)})
    assert len(docs) >= 3, docs
    locked = docs[1]
    _post(f"{pipeline.sage_url}/_sandbox/locks", {"document_no": locked, "seconds": 600})

    result = pipeline.materialize("despatch_postings")
    rows = pipeline.query(core.despatch_outbox)
    held = [r for r in rows if r["document_no"] == locked]
    assert held and all(r["state"] == "deferred" and "use" in (r["last_error"] or "") for r in held)
    assert all(r["state"] == "posted" for r in rows if r["document_no"] != locked)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["deferred_this_run"].value == len(held)

    # Still locked long after the posting was queued: stuck, with its context, for operations.
    out = core.despatch_outbox
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    with pipeline.db.write() as conn:
        conn.execute(
            out.update()
            .where(out.c.document_no == locked)
            .values(created_at=long_ago, next_attempt_at=long_ago)
        )
    pipeline.materialize("despatch_postings")
    assert {r["state"] for r in pipeline.query(core.despatch_outbox, out.c.document_no == locked)} == {
        "stuck"
    }
    pipeline.materialize("sync_exceptions")
    stuck = open_exceptions(pipeline, "despatch_stuck")
    assert {e["context"]["document_no"] for e in stuck.values()} == {locked}
    assert all(e["owner"] == "operations" and "locked" in e["context"]["error"] for e in stuck.values())

    # The desktop user leaves; someone retries the stuck rows: posted once, exception resolved.
    httpx.delete(f"{pipeline.sage_url}/_sandbox/locks/{locked}", timeout=30).raise_for_status()
    for key in stuck:
        assert pipeline.db.outbox_retry(key)
    pipeline.materialize("despatch_postings")
    pipeline.materialize("sync_exceptions")
    assert not open_exceptions(pipeline, "despatch_stuck")
    assert_sage_matches_wms_despatches(pipeline)


def use_outbox_policy(pipeline: Pipeline, tmp_path: Path, **outbox: int) -> None:
    policy = pipeline.policy
    policy = policy.model_copy(update={"outbox": policy.outbox.model_copy(update=outbox)})
    path = write_policy(policy, tmp_path / "policy-outbox.yaml")
    pipeline.resources["policy"] = PolicyResource(path=str(path))


def test_a_desktop_lock_that_clears_is_retried_within_the_run(pipeline: Pipeline, tmp_path: Path) -> None:
    # The run outlasts the client's own retries, defers the order, waits for it to come due and posts.
    use_outbox_policy(
        pipeline,
        tmp_path,
        backoff_base_seconds=1,
        backoff_max_seconds=2,
        lock_linger_seconds=20,
        lock_retry_seconds=1,
    )
    despatched_and_queued(pipeline)
    docs = sorted({r["order_number"].split("-")[0] for r in pipeline.query(core.wms_despatches)})
    _post(f"{pipeline.sage_url}/_sandbox/locks", {"document_no": docs[0], "seconds": 2})

    result = pipeline.materialize("despatch_postings")
    rows = pipeline.query(core.despatch_outbox)
    assert {r["state"] for r in rows} == {"posted"}
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["deferred_this_run"].value == sum(1 for r in rows if r["document_no"] == docs[0])
    assert meta["retried_then_posted_this_run"].value == 1
    assert meta["sage_retries_this_run"].value >= 1
    served = httpx.get(f"{pipeline.sage_url}/_sandbox/state", timeout=30).json()["faults_served"]
    assert served["refused_desktop_lock"] >= 2  # the client's retries, then the run's own retry
    assert_sage_matches_wms_despatches(pipeline)


def test_sage_status_refusal_is_stuck_for_finance_and_orphans_are_reported(pipeline: Pipeline) -> None:
    pipeline.materialize(*INGEST)
    on_hold = next(
        o for o in pipeline.query(store.sage_orders) if o["document_status"] == "EnumDocumentStatusOnHold"
    )
    line = next(
        r
        for r in pipeline.query(store.sage_order_lines, store.sage_order_lines.c.order_id == on_hold["id"])
        if r["line_type"] == "EnumLineTypeStandard"
    )
    policy = pipeline.policy
    sku = policy.sku_for_sage(line["code"])
    assert sku is not None
    wh = str(policy.wms_warehouse_id(line["warehouse"]))
    qty = line["line_quantity"] * sku.wms_units_per_sage_unit
    with pipeline.resources["wms"].client() as wms:
        # Someone keyed the held order into the WMS by hand, and a web order Sage never had.
        wms.create_order(
            OrderManifest(
                order_number=on_hold["document_no"],
                warehouse_id=wh,
                lines=(ManifestLine(sku=sku.wms_sku, quantity=qty),),
            )
        )
        wms.create_order(
            OrderManifest(
                order_number="WEB-000777",
                warehouse_id=wh,
                lines=(ManifestLine(sku=sku.wms_sku, quantity=Decimal(1)),),
            )
        )
    pipeline.advance_wms_clock(8 * 3600)
    pipeline.materialize("wms_orders", "wms_despatches")
    pipeline.materialize("despatch_postings")
    pipeline.materialize("sync_exceptions")

    refused = [r for r in pipeline.query(core.despatch_outbox) if r["document_no"] == on_hold["document_no"]]
    assert refused and {r["state"] for r in refused} == {"stuck"}
    stuck = open_exceptions(pipeline, "despatch_stuck")
    assert {e["owner"] for e in stuck.values()} == {"finance"}
    assert all("refused" in e["context"]["error"] for e in stuck.values())
    orphans = open_exceptions(pipeline, "orphaned_shipment")
    assert {e["context"]["order_number"] for e in orphans.values()} == {"WEB-000777"}
    assert all("no Sage order" in e["context"]["reason"] for e in orphans.values())
    # The held order is still open in Sage: nothing was despatched there.
    assert all(
        r["despatch_receipt_quantity"] == 0
        for r in pipeline.query(store.sage_order_lines, store.sage_order_lines.c.order_id == on_hold["id"])
    )


def test_stock_adjustments_propose_then_post_through_a_stocktake(sandbox: Any, tmp_path: Path) -> None:
    scenario = quiet(small_scenario(13))
    pipeline = generated_pipeline(sandbox, tmp_path, scenario)
    receipts = {
        (r.sku, r.warehouse): r for r in scenario.receipts if r.booked_in_wms and not r.posted_to_sage
    }
    assert receipts
    pipeline.materialize(*INGEST)
    pipeline.materialize("stock_adjustments")

    proposals = {
        (a["sku"], a["warehouse"]): a
        for a in pipeline.query(store.stock_adjustments)
        if a["source"] == "receipt"
    }
    assert set(proposals) == set(receipts)
    products = {p["sku"]: p for p in pipeline.query(core.sage_products)}
    for key, a in proposals.items():
        assert a["quantity"] == receipts[key].quantity and a["state"] == "proposed"
        assert (
            a["route"] == "finance_proposal" and a["debit_nominal"] == products[key[0]]["stock_nominal_code"]
        )
        assert a["value"] == (a["quantity"] * a["unit_cost"]).quantize(Decimal("0.01"))

    # Finance decides adjustments go to Sage: the same rows are posted through a stocktake.
    policy = load_policy(scenario=scenario)
    policy = policy.model_copy(
        update={"restock": policy.restock.model_copy(update={"adjustments_route": "stocktake"})}
    )
    path = write_policy(policy, tmp_path / "stocktake-policy.yaml")
    pipeline.resources["policy"] = PolicyResource(path=str(path))
    t = store.stock_adjustments
    with pipeline.db.write() as conn:
        conn.execute(t.update().where(t.c.source == "receipt").values(route="stocktake", state="pending"))
    pipeline.materialize("stock_adjustments")
    posted = {(a["sku"], a["warehouse"]): a for a in pipeline.query(t, t.c.source == "receipt")}
    assert {a["state"] for a in posted.values()} == {"posted"}, [a["detail"] for a in posted.values()]

    pipeline.materialize("sage_warehouse_holdings", "wms_stock_levels", "sage_products")
    pipeline.materialize("stock_parity", run_config=pipeline.parity_config())
    parity = parity_by_cause(pipeline)
    for key in receipts:
        assert parity[key]["variance"] == 0 and parity[key]["timing"] == 0, (key, parity[key])
    with pipeline.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.state == "posted")).scalar()


def test_sync_illusion_past_the_sla(pipeline: Pipeline) -> None:
    """SO0001008 is despatched in the WMS and still live in Sage: past the SLA it is an exception."""
    from sage_wms_pipeline.defs.checks.sync_state import sync_illusions

    pipeline.materialize(*INGEST)
    despatched = {o["order_number"]: o["despatched_at"] for o in pipeline.query(store.wms_orders)}
    at = despatched["SO0001008"]
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    sla = timedelta(hours=float(pipeline.policy.despatch_sla_hours))
    engine = pipeline.db.engine
    assert sync_illusions(engine, pipeline.policy, at + sla - timedelta(minutes=1)).empty
    late = sync_illusions(engine, pipeline.policy, at + sla + timedelta(hours=1))
    assert list(late["order_number"]) == ["SO0001008"]
    assert late["waited"].iloc[0] == sla + timedelta(hours=1)

    # Once posted and Sage re-read, it is no longer an illusion.
    pipeline.materialize("despatch_postings")
    pipeline.materialize("sage_sales_orders")
    assert sync_illusions(engine, pipeline.policy, at + sla + timedelta(hours=1)).empty


def test_pick_trigger_posts_at_pick_and_not_again_at_despatch(sandbox: Any, tmp_path: Path) -> None:
    from sage_wms_pipeline.scenario.io import read_scenario
    from sage_wms_pipeline.settings import demo_scenario_path

    scenario = quiet(read_scenario(demo_scenario_path()))
    policy = load_policy(scenario=scenario).model_copy(update={"fulfilment_trigger": "pick"})
    sandbox.load(scenario)
    path = write_policy(policy, tmp_path / "pick.yaml")
    pipeline = Pipeline(
        sandbox.sage_url,
        sandbox.wms_url,
        pipeline_resources(sandbox.sage_url, sandbox.wms_url, tmp_path, policy_path=path),
    )
    pipeline.materialize(*INGEST)
    pipeline.materialize("order_manifests")
    pipeline.advance_wms_clock(int(3.2 * 3600))  # picked (1.9-3.1 h), none despatched yet (>= 3.4 h)
    pipeline.materialize("wms_orders", "wms_despatches")
    statuses = {o["order_number"]: o["raw_status"] for o in pipeline.query(store.wms_orders)}
    picked = {n for n, s in statuses.items() if s in ("PICKED", "PACKANDHOLD")}
    assert picked, statuses
    pipeline.materialize("despatch_postings")
    posted_docs = {r["document_no"] for r in pipeline.query(core.despatch_outbox)}
    assert {parse_order_number(n)[0] for n in picked} <= posted_docs
    assert all(statuses[d] in ("PICKED", "PACKANDHOLD", "DESPATCHED") for d in posted_docs if d in statuses)
    rows_at_pick = len(pipeline.query(core.despatch_outbox))

    # Later the same orders despatch: nothing is posted twice, and Sage equals what the WMS shipped.
    pipeline.advance_wms_clock(4 * 3600)
    pipeline.materialize("wms_orders", "wms_despatches")
    pipeline.materialize("despatch_postings")
    outbox = pipeline.query(core.despatch_outbox)
    assert {r["state"] for r in outbox} == {"posted"}
    assert len({r["dedupe_key"] for r in outbox}) == len(outbox) >= rows_at_pick
    assert_sage_matches_wms_despatches(pipeline)
