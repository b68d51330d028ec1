"""Scenarios loaded into both running simulators over HTTP, and read back through their APIs.

Stock agrees between Sage 200 and the WMS everywhere except where drift was planted, and there
the difference read through the two APIs equals the ground truth (`Scenario.expected`). Bad
scenarios are refused with the field and the row named, and change nothing.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.scenario.io import (
    SandboxLoadError,
    ScenarioError,
    load_into_sandbox,
    read_scenario,
    validate_scenario,
)
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.scenario.truth import expected_by_pair, positions_after_load
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline_tests.conftest import Sandbox, free_port

SAGE_API = "/uk/sage200extra/accounts/v1"
Key = tuple[str, str]


def sage_client(base: str) -> httpx.Client:
    """A client for the Sage 200 API with a token from the demo credentials and the company headers."""
    token = httpx.post(
        base + "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": "sandbox-code",
            "client_id": "sandbox",
            "client_secret": "sandbox",
        },
        timeout=30,
    )
    token.raise_for_status()
    client = httpx.Client(
        base_url=base + SAGE_API,
        timeout=60,
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
    )
    site = client.get("/sites")
    site.raise_for_status()
    first = jsonutil.loads(site.content)[0]
    client.headers.update({"X-Site": str(first["site_id"]), "X-Company": str(first["company_id"])})
    return client


def sage_all(client: httpx.Client, path: str, select: str) -> list[dict]:
    rows: list[dict] = []
    while True:
        resp = client.get(
            path, params={"$top": 5000, "$skip": len(rows), "$orderby": "id", "$select": select}
        )
        resp.raise_for_status()
        page = jsonutil.loads(resp.content)
        rows += page
        if len(page) < 5000:
            return rows


def sage_stock(base: str) -> dict[Key, Decimal]:
    """(Sage SKU, Sage warehouse) -> quantity_in_stock, through the Sage 200 API."""
    client = sage_client(base)
    try:
        codes = {p["id"]: p["code"] for p in sage_all(client, "/products", "id,code")}
        holdings = sage_all(client, "/warehouse_holdings", "id,product_id,warehouse_name,quantity_in_stock")
    finally:
        client.close()
    return {(codes[h["product_id"]], h["warehouse_name"]): h["quantity_in_stock"] for h in holdings}


def wms_stock(base: str) -> dict[tuple[str, int], tuple[Decimal, Decimal]]:
    """(WMS SKU, WarehouseId) -> (TotalStockLevel, InQuarantine), through the Mintsoft API."""
    key = httpx.post(base + "/api/Auth", json={"Username": "sandbox", "Password": "sandbox"}, timeout=30)
    key.raise_for_status()
    out: dict[tuple[str, int], tuple[Decimal, Decimal]] = {}
    with httpx.Client(base_url=base, headers={"ms-apikey": key.json()}, timeout=60) as client:
        page_no = 1
        while True:
            resp = client.get("/api/Product/StockLevels", params={"PageNo": page_no, "Limit": 100})
            resp.raise_for_status()
            page = jsonutil.loads(resp.content)
            for row in page:
                out[(row["SKU"], row["WarehouseId"])] = (
                    Decimal(row["TotalStockLevel"]),
                    Decimal(row["InQuarantine"]),
                )
            if not page:
                return out
            page_no += 1


def variances_through_apis(sandbox: Sandbox, s: Scenario) -> tuple[dict[Key, Decimal], dict[Key, Decimal]]:
    """Per (sku, warehouse): Sage quantity in stock, and WMS - Sage in Sage units, read through the APIs."""
    assert sandbox.wms_url is not None
    sage = sage_stock(sandbox.sage_url)
    wms = wms_stock(sandbox.wms_url)
    products = {p.sku: p for p in s.products}
    wh_name = {w.wms_warehouse_id: w.sage_name for w in s.warehouses}
    sku_of = {p.wms_code: p.sku for p in s.products}
    variance: dict[Key, Decimal] = {}
    for (wms_sku, wid), (level, quarantine) in wms.items():
        key = (sku_of[wms_sku], wh_name[wid])
        units = products[key[0]].wms_units_per_sage_unit
        variance[key] = (level + quarantine) / units - sage.get(key, Decimal(0))
    for key, qty in sage.items():
        variance.setdefault(key, -qty)
    return sage, variance


@pytest.fixture
def generated(sandbox: Sandbox) -> tuple[Scenario, dict[Key, Decimal], dict[Key, Decimal]]:
    """A small generated scenario loaded into both simulators, and (Sage stock, variance) read back."""
    s = generate(skus=80, warehouses=3, orders_per_day=30, days=2, seed=21)
    load_into_sandbox(s, sage_url=sandbox.sage_url, wms_url=sandbox.wms_url)
    s = validate_scenario(s)
    sage, variance = variances_through_apis(sandbox, s)
    return s, sage, variance


def _receipt_pairs(s: Scenario) -> set[Key]:
    return {(r.sku, r.warehouse) for r in s.receipts if r.booked_in_wms or r.posted_to_sage}


def test_generated_scenario_reads_back_through_both_apis(
    generated: tuple[Scenario, dict[Key, Decimal], dict[Key, Decimal]],
) -> None:
    s, sage, variance = generated
    truth = positions_after_load(s)
    skip = _receipt_pairs(s)  # see test_booked_and_posted_receipts_apply_on_load
    # Every stock row made it to Sage with the quantity the file implies.
    assert {k: sage.get(k) for k in truth if k not in skip} == {
        k: p.sage_in_stock for k, p in truth.items() if k not in skip
    }
    # Stock agrees except where drift was planted; there it equals the ground truth.
    found = {k: q for k, q in variance.items() if q != 0 and k not in skip}
    planted = {k: q for k, q in expected_by_pair(s).items() if q != 0 and k not in skip}
    assert found == planted
    kinds = {d.kind for d in s.drift if (d.sku, d.warehouse) in found}
    assert kinds == {
        "despatched_not_posted",
        "return_in_quarantine",
        "uom_mismatch",
        "true_shrink",
        "true_gain",
    }
    for d in s.drift:
        if d.kind in ("bin_mis_slot", "standard_cost_change"):
            assert variance[(d.sku, d.warehouse)] == 0


def test_booked_and_posted_receipts_apply_on_load(
    generated: tuple[Scenario, dict[Key, Decimal], dict[Key, Decimal]],
) -> None:
    s, sage, variance = generated
    truth = positions_after_load(s)
    pairs = _receipt_pairs(s)
    assert {k: sage.get(k) for k in pairs} == {k: truth[k].sage_in_stock for k in pairs}
    assert {k: variance[k] for k in pairs} == {k: expected_by_pair(s).get(k, Decimal(0)) for k in pairs}
    assert any(d.kind == "received_not_in_sage" for d in s.drift if variance[(d.sku, d.warehouse)] > 0)


def test_demo_drift_reads_back_through_both_apis(sandbox: Sandbox) -> None:
    s = read_scenario(demo_scenario_path())
    _, variance = variances_through_apis(sandbox, s)  # the fixture reset both simulators to the demo
    assert {k: q for k, q in variance.items() if q != 0} == {
        k: q for k, q in expected_by_pair(s).items() if q != 0
    }


def _bad_scenario() -> Scenario:
    s = read_scenario(demo_scenario_path())
    s.name = "bad"
    s.orders[2].lines[1].sku = "ABC"  # assignment is not validated: the object is now inconsistent
    return s


def test_invalid_scenario_is_not_sent(sandbox: Sandbox) -> None:
    assert sandbox.wms_url is not None
    before = (sage_stock(sandbox.sage_url), wms_stock(sandbox.wms_url))
    with pytest.raises(
        ScenarioError, match=r"orders\[2\]\.lines\[1\]\.sku: unknown SKU 'ABC' \(order SO0001003\)"
    ):
        load_into_sandbox(_bad_scenario(), sage_url=sandbox.sage_url, wms_url=sandbox.wms_url)
    assert (sage_stock(sandbox.sage_url), wms_stock(sandbox.wms_url)) == before


def test_simulators_refuse_an_invalid_scenario_and_keep_their_state(sandbox: Sandbox) -> None:
    assert sandbox.wms_url is not None
    before = (sage_stock(sandbox.sage_url), wms_stock(sandbox.wms_url))
    body = jsonutil.dumps(_bad_scenario().model_dump(mode="python"))
    for base in (sandbox.sage_url, sandbox.wms_url):
        resp = httpx.post(
            base + "/_sandbox/scenario",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert resp.status_code == 400, (base, resp.text)
        assert "orders[2].lines[1].sku: unknown SKU 'ABC'" in resp.text, (base, resp.text)
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.load(_bad_scenario())
    assert (sage_stock(sandbox.sage_url), wms_stock(sandbox.wms_url)) == before


def test_a_refusing_simulator_is_reported(sandbox: Sandbox) -> None:
    s = read_scenario(demo_scenario_path())
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SandboxLoadError, match="unreachable") as info:
        load_into_sandbox(s, sage_url=nowhere, wms_url=sandbox.wms_url)
    assert "already loaded" not in str(info.value)  # Sage failed first, so the WMS was not touched
    with pytest.raises(SandboxLoadError, match="simulators now disagree"):
        load_into_sandbox(s, sage_url=sandbox.sage_url, wms_url=nowhere)
