"""The asset graph end to end against both simulators over HTTP.

Demo scenario and a small generated one (with every planted drift kind): parity finds exactly the
planted ground truth; manifests reach the WMS once however often they are materialized; once the
WMS clock moves and orders despatch, the postings bring Sage's despatched quantities to the WMS's,
and what parity reports in flight is exactly what is left unposted. Also on PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.domain.policy import load_policy
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline.storage import ingest_tables as store
from sage_wms_pipeline.storage import tables as core
from sage_wms_pipeline_tests.defs.conftest import (
    INGEST,
    POSTGRES_URL,
    Pipeline,
    pipeline_resources,
    quiet,
    write_policy,
)

E5 = Decimal(10**5)
CAUSES = ("timing", "status", "mapping", "unexplained")
DESPATCHED = {"DESPATCHED", "INVOICED", "INVOICEDFAILED"}


# ------------------------------------------------------------------------------- independent reads


class MintsoftReader:
    """Straight HTTP reads of the WMS simulator, independent of the pipeline's client."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)
        key = self.http.post("/api/Auth", json={"Username": "sandbox", "Password": "sandbox"}).json()
        self.http.headers["ms-apikey"] = key

    def pages(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for page in range(1, 10_000):
            resp = self.http.get(path, params={**params, "PageNo": page, "Limit": 100})
            resp.raise_for_status()
            batch = jsonutil.loads(resp.content)
            if not batch:
                return rows
            rows += batch
        raise AssertionError("too many pages")

    def orders(self) -> list[dict[str, Any]]:
        return self.pages(
            "/api/Order/List", {"SinceLastUpdated": "2000-01-01T00:00:00Z", "IncludeOrderItems": "true"}
        )

    def despatched(self) -> dict[tuple[str, str, int], Decimal]:
        """(Sage document no, WMS SKU, warehouse id) -> units despatched, over all parts and manifests."""
        out: dict[tuple[str, str, int], Decimal] = defaultdict(Decimal)
        for o in self.orders():
            if o["OrderStatus"] not in DESPATCHED:
                continue
            head, sep, tail = o["OrderNumber"].rpartition("-")
            doc = head if sep and tail.isdigit() else o["OrderNumber"]
            for item in o["OrderItems"]:
                wh = int(item.get("WarehouseId") or o["WarehouseId"])
                out[(doc, item["SKU"], wh)] += Decimal(item.get("QuantityDespatched", item["Quantity"]))
        return out


def wms_shrink(pipeline: Pipeline) -> dict[tuple[str, str], Decimal]:
    """Stock the living warehouse lost or found since load (damage, miscounts, short picks), per
    SKU and warehouse in Sage units, from the WMS ledger: true shrink the pipeline cannot explain."""
    policy = pipeline.policy
    out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in MintsoftReader(pipeline.wms_url).pages("/api/Product/StockFlow", {}):
        if row["Flow"] in ("CountCorrection", "Scrap") and Decimal(row["LevelChange"]):
            sku = policy.sku_for_wms(row["SKU"])
            assert sku is not None
            key = (sku.sage_code, policy.sage_warehouse(int(row["WarehouseId"])))
            out[key] += Decimal(row["LevelChange"]) / sku.wms_units_per_sage_unit
    return out


def sage_despatched(pipeline: Pipeline) -> dict[tuple[str, str, str], Decimal]:
    """(document no, product code, warehouse) -> quantity Sage holds as despatched."""
    out: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    with pipeline.resources["sage"].client() as client:
        names = {int(w["id"]): w["name"] for w in client.list("warehouses")}
        for order in client.list("sop_orders", expand="lines"):
            for line in order.get("lines") or []:
                if line["line_type"] == "EnumLineTypeStandard":
                    key = (order["document_no"], line["code"], names[int(line["warehouse_id"])])
                    out[key] += Decimal(line["despatch_receipt_quantity"])
    return out


def wms_despatched_in_sage_terms(pipeline: Pipeline) -> dict[tuple[str, str, str], Decimal]:
    policy = pipeline.policy
    out: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for (doc, wms_sku, wh), qty in MintsoftReader(pipeline.wms_url).despatched().items():
        sku = policy.sku_for_wms(wms_sku)
        assert sku is not None, wms_sku
        out[(doc, sku.sage_code, policy.sage_warehouse(wh))] += qty / sku.wms_units_per_sage_unit
    return out


# ------------------------------------------------------------------------------------ comparisons


def expected_by_cause(scenario: Scenario) -> dict[tuple[str, str], dict[str, Decimal]]:
    out: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(CAUSES, Decimal(0)))
    for e in scenario.expected:
        out[(e.sku, e.warehouse)][e.cause] += e.quantity
    return out


def parity_by_cause(pipeline: Pipeline) -> dict[tuple[str, str], dict[str, Decimal]]:
    out = {}
    for r in pipeline.query(core.stock_parity):
        out[(r["sku"], r["warehouse"])] = {
            "timing": Decimal(r["in_flight_despatch_e5"] + r["receipts_not_in_sage_e5"]) / E5,
            "status": Decimal(r["quarantine_e5"]) / E5,
            "mapping": Decimal(r["mapping_e5"]) / E5,
            "unexplained": Decimal(r["unexplained_e5"]) / E5,
            "in_flight": Decimal(r["in_flight_despatch_e5"]) / E5,
            "variance": Decimal(r["variance_e5"]) / E5,
        }
    return out


def assert_parity_is_ground_truth(
    pipeline: Pipeline,
    scenario: Scenario,
    causes: tuple[str, ...] = CAUSES,
    shrink: dict[tuple[str, str], Decimal] | None = None,
) -> None:
    expected = expected_by_cause(scenario)
    for key, qty in (shrink or {}).items():
        expected[key]["unexplained"] += qty
    found = parity_by_cause(pipeline)
    zero = dict.fromkeys(CAUSES, Decimal(0))
    mismatches = []
    for key in sorted(set(expected) | set(found)):
        want, got = expected.get(key, zero), found.get(key, zero)
        for cause in causes:
            if want[cause] != got[cause]:
                mismatches.append(f"{key} {cause}: expected {want[cause]}, parity says {got[cause]}")
    assert not mismatches, "\n".join(mismatches)


def assert_sage_matches_wms_despatches(pipeline: Pipeline) -> dict[tuple[str, str, str], Decimal]:
    wms = wms_despatched_in_sage_terms(pipeline)
    sage = sage_despatched(pipeline)
    assert wms, "nothing was despatched in the WMS; the test proves nothing"
    diff = {
        k: (wms.get(k, Decimal(0)), sage.get(k, Decimal(0)))
        for k in set(wms) | set(sage)
        if wms.get(k, Decimal(0)) != sage.get(k, Decimal(0))
    }
    assert not diff, f"(WMS, Sage) despatched differ: {diff}"
    return wms


def in_flight_left(pipeline: Pipeline) -> dict[tuple[str, str], Decimal]:
    """What the WMS has despatched that Sage has not, per SKU and warehouse (negative, WMS - Sage)."""
    wms, sage = wms_despatched_in_sage_terms(pipeline), sage_despatched(pipeline)
    out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for (doc, sku, wh), qty in wms.items():
        left = qty - sage.get((doc, sku, wh), Decimal(0))
        if left:
            out[(sku, wh)] -= left
    return out


def assert_in_flight_matches(pipeline: Pipeline) -> None:
    left = in_flight_left(pipeline)
    found = {k: v["in_flight"] for k, v in parity_by_cause(pipeline).items() if v["in_flight"]}
    assert found == dict(left)


def wms_orders_by_number(pipeline: Pipeline) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for o in MintsoftReader(pipeline.wms_url).orders():
        if (o.get("Part") or 1) == 1:
            counts[o["OrderNumber"]] += 1
    return counts


# ------------------------------------------------------------------------------------------ flows


def run_full_cycle(pipeline: Pipeline, scenario: Scenario) -> None:
    # 1. Both sides read; parity before anything is posted: exactly the planted truth.
    pipeline.materialize(*INGEST)
    pipeline.materialize(
        "stock_parity", "valuation_deltas", "available_stock", run_config=pipeline.parity_config()
    )
    assert_parity_is_ground_truth(pipeline, scenario)
    assert_in_flight_matches(pipeline)
    first_seen = {
        (r["sku"], r["warehouse"]): r["first_seen"]
        for r in pipeline.query(core.stock_parity)
        if r["unexplained_e5"]
    }

    # 2. Manifests, twice: every live order not yet in the WMS arrives once, and only once.
    live_docs = {o.document_no for o in scenario.orders if o.status == "Live" and o.in_wms is None}
    first = pipeline.materialize("order_manifests")
    pipeline.materialize("sage_sales_orders", "wms_orders")
    second = pipeline.materialize("order_manifests")
    meta = second.get_asset_materialization_events()[0].materialization.metadata
    assert meta["manifests_created"].value == 0
    assert first.get_asset_materialization_events()[0].materialization.metadata["manifests_created"].value > 0
    numbers = wms_orders_by_number(pipeline)
    sent = pipeline.query(core.order_manifests)
    sent_docs = {m["sage_document_no"] for m in sent}
    assert sent_docs <= live_docs
    for m in sent:
        assert m["sent_at"] is not None and numbers.get(m["order_number"]) == 1, m["order_number"]
    excluded_docs = {e["sage_document_no"] for e in pipeline.query(core.order_manifest_excluded)}
    assert live_docs - sent_docs <= excluded_docs, "a live order got neither a manifest nor excluded lines"

    # 3. Warehouse time passes: orders are picked, packed and despatched.
    pipeline.advance_wms_clock(10 * 3600)
    pipeline.materialize("wms_orders", "wms_despatches")
    pipeline.materialize("despatch_postings")
    pipeline.materialize("sage_despatches", "sage_sales_orders")
    assert_sage_matches_wms_despatches(pipeline)
    outbox = pipeline.query(core.despatch_outbox)
    assert outbox and all(r["state"] == "posted" for r in outbox)

    # 4. Parity again: nothing unexplained beyond the planted truth; nothing left in flight.
    pipeline.materialize(*INGEST)
    pipeline.materialize(
        "stock_parity", "valuation_deltas", "sync_exceptions", run_config=pipeline.parity_config()
    )
    assert_parity_is_ground_truth(
        pipeline, scenario, causes=("status", "mapping", "unexplained"), shrink=wms_shrink(pipeline)
    )
    assert_in_flight_matches(pipeline)
    assert not in_flight_left(pipeline)
    # A difference still standing keeps the time it was first seen, and its age grows.
    for r in pipeline.query(core.stock_parity):
        key = (r["sku"], r["warehouse"])
        if r["unexplained_e5"] and key in first_seen:
            assert r["first_seen"] == first_seen[key], key
            age = (pd.Timestamp(r["cutoff"]) - pd.Timestamp(first_seen[key])).total_seconds()
            assert r["age_seconds"] == int(age) > 0, key

    # What the warehouse lost or found (damage, miscounts) is proposed to finance, unit for unit.
    pipeline.materialize("wms_stock_movements", "stock_adjustments")
    proposed: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for a in pipeline.query(store.stock_adjustments):
        if a["source"] == "movement":
            assert a["state"] == "proposed" and a["route"] == "finance_proposal"
            proposed[(a["sku"], a["warehouse"])] += a["quantity"]
    assert dict(proposed) == {k: v for k, v in wms_shrink(pipeline).items() if v}

    # Posting again changes nothing.
    again = pipeline.materialize("wms_despatches", "despatch_postings")
    metas = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in again.get_asset_materialization_events()
    }
    assert metas["despatch_postings"]["posted_this_run"].value == 0
    assert metas["despatch_postings"]["outbox_added"].value == 0
    assert_sage_matches_wms_despatches(pipeline)


def test_demo_scenario_end_to_end(pipeline: Pipeline) -> None:
    run_full_cycle(pipeline, read_scenario(demo_scenario_path()))


def generated_pipeline(sandbox: Any, tmp_path: Path, scenario: Scenario, **db: Any) -> Pipeline:
    sandbox.load(scenario)
    policy = write_policy(load_policy(scenario=scenario), tmp_path / "policy.yaml")
    resources = pipeline_resources(sandbox.sage_url, sandbox.wms_url, tmp_path, policy_path=policy, **db)
    return Pipeline(sandbox.sage_url, sandbox.wms_url, resources)


def small_scenario(seed: int) -> Scenario:
    return quiet(generate(skus=60, warehouses=3, orders_per_day=12, days=2, seed=seed))


def test_generated_scenario_end_to_end(sandbox: Any, tmp_path: Path) -> None:
    # Half the orders split into parts and half ship in several parcels: one WMS order, many events.
    scenario = small_scenario(11)
    busy = {"split_rate": Decimal("0.5"), "multi_parcel_rate": Decimal("0.5")}
    scenario = scenario.model_copy(update={"behaviour": scenario.behaviour.model_copy(update=busy)})
    kinds = {d.kind for d in scenario.drift}
    assert {
        "despatched_not_posted",
        "return_in_quarantine",
        "true_shrink",
        "true_gain",
        "uom_mismatch",
        "bin_mis_slot",
    } <= kinds
    run_full_cycle(generated_pipeline(sandbox, tmp_path, scenario), scenario)


@pytest.mark.postgres
def test_generated_scenario_on_postgres(sandbox: Any, tmp_path: Path, postgres_schema: str) -> None:
    scenario = small_scenario(5)
    pipeline = generated_pipeline(sandbox, tmp_path, scenario, db_url=POSTGRES_URL, db_schema=postgres_schema)
    run_full_cycle(pipeline, scenario)
