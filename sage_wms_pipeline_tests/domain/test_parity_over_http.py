"""Parity computed from what the two simulators actually serve over HTTP equals the scenario's
planted ground truth: checks that the input frames' meaning matches the APIs."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx
import pandas as pd
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.domain.parity import stock_parity
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import to_e5
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline_tests.conftest import Sandbox

SAGE_PATH = "/uk/sage200extra/accounts/v1"
SITE = "5c3f9d2e-1a7b-4e8c-9f60-2b4d8a1e7c35"


def _get(client: httpx.Client, url: str, **params: Any) -> Any:
    r = client.get(url, params=params)
    r.raise_for_status()
    return jsonutil.loads(r.text)


def test_parity_from_live_simulators_matches_ground_truth(sandbox: Sandbox) -> None:
    if sandbox.wms_url is None:
        pytest.skip("WMS simulator not available")
    key = jsonutil.loads(
        httpx.post(sandbox.wms_url + "/api/Auth", json={"Username": "sandbox", "Password": "sandbox"}).text
    )
    token = httpx.post(
        sandbox.sage_url + "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "client_id": "sandbox",
            "client_secret": "sandbox",
            "code": "sandbox-code",
        },
    ).json()["access_token"]
    sage_headers = {"Authorization": f"Bearer {token}", "X-Site": SITE, "X-Company": "1"}
    with (
        httpx.Client(headers={"ms-apikey": key}, timeout=30) as wms,
        httpx.Client(base_url=sandbox.sage_url + SAGE_PATH, headers=sage_headers, timeout=30) as sage,
    ):
        levels = _get(wms, sandbox.wms_url + "/api/Product/StockLevels", Breakdown="false")
        wms_orders = _get(wms, sandbox.wms_url + "/api/Order/List", IncludeOrderItems="true")
        holdings = _get(sage, "/warehouse_holdings", **{"$top": 5000})
        products = {p["id"]: p for p in _get(sage, "/products", **{"$top": 5000})}
        groups = {g["id"]: g["code"] for g in _get(sage, "/product_groups")}
        sage_orders = {
            o["document_no"]: o for o in _get(sage, "/sop_orders", **{"$expand": "lines", "$top": 5000})
        }

    wms_stock = pd.DataFrame(
        {
            "wms_sku": [r["SKU"] for r in levels],
            "wms_warehouse_id": [r["WarehouseId"] for r in levels],
            "sellable_e5": [to_e5(r["TotalStockLevel"]) for r in levels],
            "quarantine_e5": [to_e5(r["InQuarantine"]) for r in levels],
        }
    )
    sage_holdings = pd.DataFrame(
        {
            "sku": [products[h["product_id"]]["code"] for h in holdings],
            "warehouse": [h["warehouse_name"] for h in holdings],
            "product_group": [groups[products[h["product_id"]]["product_group_id"]] for h in holdings],
            "quantity_in_stock_e5": [to_e5(h["quantity_in_stock"]) for h in holdings],
            "free_stock_e5": [to_e5(h["free_stock_available"]) for h in holdings],
        }
    )
    # Despatched in the WMS beyond what Sage has recorded as despatched: in flight.
    events = []
    for o in wms_orders:
        if o["OrderStatus"] != "DESPATCHED":
            continue
        doc = o["OrderNumber"].split("-")[0]
        posted: dict[str, Decimal] = defaultdict(Decimal)
        for line in sage_orders[doc]["lines"]:
            if line["line_type"] == "EnumLineTypeStandard":
                posted[line["code"]] += line["despatch_receipt_quantity"]
        for item in o["OrderItems"]:
            open_qty = item["QuantityDespatched"] - posted[item["SKU"]]
            if open_qty > 0:
                events.append(
                    (o["OrderNumber"], item["SKU"], item["WarehouseId"], open_qty, o["DespatchDate"])
                )
    explanations = pd.DataFrame(
        {
            "kind": ["despatch_not_posted"] * len(events),
            "reference": [e[0] for e in events],
            "wms_sku": [e[1] for e in events],
            "wms_warehouse_id": [e[2] for e in events],
            "quantity_e5": [to_e5(e[3]) for e in events],
            "event_at": pd.to_datetime([e[4] for e in events], utc=True),
            "sage_posted_at": pd.Series([pd.NaT] * len(events), dtype="datetime64[ns, UTC]"),
        }
    )

    scenario = read_scenario(demo_scenario_path())
    policy = Policy().with_scenario_mappings(scenario)
    parity = stock_parity(wms_stock, sage_holdings, explanations, policy, pd.Timestamp.now(tz="UTC"))

    truth: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for e in scenario.expected:
        truth[(e.sku, e.warehouse, e.cause)] += e.quantity
    for _, row in parity.iterrows():
        got = {
            "timing": row["in_flight_despatch_e5"] + row["receipts_not_in_sage_e5"],
            "status": row["quarantine_e5"],
            "mapping": row["mapping_e5"],
            "unexplained": row["unexplained_e5"],
        }
        for cause, value in got.items():
            assert value == to_e5(truth[(row["sku"], row["warehouse"], cause)]), (
                row["sku"],
                row["warehouse"],
                cause,
            )
    planted = {(e.sku, e.warehouse) for e in scenario.expected if e.quantity != 0}
    assert (
        set(
            zip(
                parity.loc[parity["variance_e5"] != 0, "sku"],
                parity.loc[parity["variance_e5"] != 0, "warehouse"],
                strict=True,
            )
        )
        == planted
    )
