"""Sage 200 simulator over real HTTP: Swagger conformance, OData rules, auth, persistence."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from sage_wms_pipeline import jsonutil, settings
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.simulators.sage200.app import BASE
from sage_wms_pipeline.simulators.sage200.store import SITE_ID
from sage_wms_pipeline_tests.conftest import Sandbox, start_sandbox

SWAGGER = (
    Path(__file__).resolve().parents[2] / "sage_wms_pipeline/simulators/sage200/swagger_definitions.json"
)
# Sage's own status literals (EnumDocumentStatusComplete, 26 chars) overflow the 20 its Swagger declares
LONG_ENUM_FIELDS = {"document_status", "sop_order_document_status_type"}
STATUS_LITERALS = {
    "EnumDocumentStatusLive",
    "EnumDocumentStatusOnHold",
    "EnumDocumentStatusComplete",
    "EnumDocumentStatusCancelled",
    "EnumDocumentStatusDraft",
}
LINE_TYPES = {"EnumLineTypeStandard", "EnumLineTypeFreeText", "EnumLineTypeCharge", "EnumLineTypeComment"}


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Sage alone (the WMS simulator is not needed here), shared by this module's tests."""
    box = start_sandbox(tmp_path_factory.mktemp("sage200-api") / "state", with_wms=False)
    yield box
    box.stop()


def get_token(base: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "client_id": "sandbox",
        "client_secret": "sandbox",
        "code": "sandbox-code",
        **form,
    }
    return httpx.post(base + "/oauth/token", data=data, timeout=30)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Site": SITE_ID, "X-Company": "1"}


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    token = get_token(sandbox.sage_url).json()["access_token"]
    with httpx.Client(base_url=sandbox.sage_url + BASE, headers=headers(token), timeout=60) as client:
        yield client


def body(resp: httpx.Response) -> Any:
    return jsonutil.loads(resp.content)


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return body(resp)


def admin(sandbox: Sandbox, path: str, payload: object) -> httpx.Response:
    return httpx.post(sandbox.sage_url + "/_sandbox/" + path, content=jsonutil.dumps(payload), timeout=60)


# --- conformance ----------------------------------------------------------------------------------


def _json_schema(name: str) -> dict[str, Any]:
    """A Swagger definition as JSON Schema: nulls allowed (Sage sends them), `required` relaxed."""
    definitions = copy.deepcopy(json.loads(SWAGGER.read_text())["definitions"])

    def relax(node: Any, prop: str | None = None) -> Any:
        if isinstance(node, dict):
            node.pop("required", None)
            node.pop("format", None)
            if prop in LONG_ENUM_FIELDS:
                node.pop("maxLength", None)
            if "properties" in node:
                node["properties"] = {k: relax(v, k) for k, v in node["properties"].items()}
            for key in ("items",):
                if key in node:
                    node[key] = relax(node[key])
            if isinstance(node.get("type"), str) and prop is not None:
                node["type"] = [node["type"], "null"]
        return node

    for key, value in definitions.items():
        definitions[key] = relax(value)
    return {"$ref": f"#/definitions/{name}", "definitions": definitions}


def validate(instance: Any, name: str) -> None:
    jsonschema.Draft4Validator(_json_schema(name)).validate(instance)


def test_every_resource_matches_the_swagger_definitions(api: httpx.Client) -> None:
    order = ok(api.get("/sop_orders", params={"$filter": "document_no eq 'SO0001001'", "$expand": "lines"}))[
        0
    ]
    despatch = {
        "sop_order_return_id": order["id"],
        "items": [{"id": ln["id"], "quantity": ln["line_quantity"]} for ln in order["lines"]],
        "tracking_items": [{"consignment_no": "RM1234", "pieces": 1, "weight": Decimal("0.5")}],
    }
    validate(
        ok(api.post("/sop_confirm_despatch", content=jsonutil.dumps(despatch))),
        "sop_confirm_despatch_adjustment",
    )
    stocktake = ok(
        api.post(
            "/stocktakes",
            content=jsonutil.dumps(
                {"warehouse_id": 1, "stocktake_items": [{"item_code": "MUG-STONE", "is_selected": True}]}
            ),
        )
    )
    validate(stocktake, "stocktake")

    checks = [
        ("/product_groups", "product_group"),
        ("/products", "product"),
        ("/warehouses", "warehouse"),
        ("/warehouse_holdings", "warehouse_holding"),
        ("/sop_orders?$expand=lines", "sop_order"),
        ("/sop_orders/1/sop_order_lines", "sop_order_line"),
        ("/sop_confirm_despatch", "sop_confirm_despatch_adjustment"),
        ("/sop_despatch_receipts", "sop_despatch_receipt"),
        ("/sop_order_despatch_line_views", "sop_order_despatch_line_view"),
        ("/product_transaction_views", "product_transaction_view"),
        ("/sop_settings", "sop_settings"),
        ("/stock_settings", "stock_settings"),
        ("/stocktakes", "stocktake"),
    ]
    for path, definition in checks:
        items = ok(api.get(path))
        assert isinstance(items, list) and items, f"{path} returned no records to check"
        for item in items:
            validate(item, definition)
    validate(ok(api.get(f"/sop_orders/{order['id']}")), "sop_order")
    validate(ok(api.get(f"/sop_order_lines/{order['lines'][0]['id']}")), "sop_order_line")
    validate(
        ok(api.get(f"/stocktake_count_sheet_items/{stocktake['stocktake_count_sheet_items'][0]['id']}")),
        "stocktake_count_sheet_item",
    )


def test_enum_literals_and_entity_stamps(api: httpx.Client) -> None:
    groups = ok(api.get("/product_groups"))
    assert {g["product_type"] for g in groups} <= {
        "EnumStockItemTypeStock",
        "EnumStockItemTypeServiceLabour",
        "EnumStockItemTypeMiscellaneous",
    }
    assert {g["costing_method"] for g in groups} == {"FIFO", "Average", "Standard"}
    orders = ok(api.get("/sop_orders", params={"$expand": "lines"}))
    assert {o["document_status"] for o in orders} == STATUS_LITERALS - {"EnumDocumentStatusComplete"}
    assert {ln["line_type"] for o in orders for ln in o["lines"]} == LINE_TYPES
    for path in ("/products", "/warehouse_holdings", "/sop_orders", "/warehouses", "/customers"):
        for item in ok(api.get(path)):
            assert isinstance(item["id"], int)
            assert item["date_time_updated"].endswith("Z")


def test_holding_quantities_follow_sages_formulas(api: httpx.Client) -> None:
    for h in ok(api.get("/warehouse_holdings")):
        assert h["quantity_in_stock"] == h["confirmed_qty_in_stock"] + h["unconfirmed_qty_in_stock"]
        assert h["quantity_allocated"] == (
            h["quantity_allocated_stock"] + h["quantity_allocated_sop"] + h["quantity_allocated_bom"]
        )
        assert h["free_stock_available"] == h["quantity_in_stock"] - h["quantity_allocated"]
        assert h["quantity_in_stock_less_reserved"] == h["quantity_in_stock"] - h["quantity_reserved"]
        assert h["free_stock_available_less_reserved"] == h["free_stock_available"] - h["quantity_reserved"]
    # live orders were allocated on entry: allocations per holding equal the live lines' allocations
    lines = [
        ln
        for o in ok(api.get("/sop_orders", params={"$expand": "lines"}))
        if o["document_status"] == "EnumDocumentStatusLive"
        for ln in o["lines"]
    ]
    holdings = {(h["product_id"], h["warehouse_id"]): h for h in ok(api.get("/warehouse_holdings"))}
    stock_products = {
        p["id"]
        for p in ok(api.get("/products"))
        if p["product_group_id"]
        in {g["id"] for g in ok(api.get("/product_groups")) if g["product_type"] == "EnumStockItemTypeStock"}
    }
    expected: dict[tuple[int, int], Decimal] = {}
    for ln in lines:
        if ln["product_id"] in stock_products:
            key = (ln["product_id"], ln["warehouse_id"])
            expected[key] = expected.get(key, Decimal(0)) + ln["allocated_quantity"]
    assert expected
    for key, allocated in expected.items():
        assert holdings[key]["quantity_allocated_sop"] == allocated


# --- OData ----------------------------------------------------------------------------------------


def many_products_scenario(count: int) -> Scenario:
    demo = Scenario.model_validate(jsonutil.loads(settings.demo_scenario_path().read_bytes()))
    data = demo.model_dump(mode="python")
    template = data["products"][0]
    extra = []
    for i in range(count):
        p = dict(
            template,
            sku=f"BULK-{i:05d}",
            name=f"Bulk item {i}",
            barcode=None,
            unit_cost=Decimal(i % 50) + Decimal("0.125"),
        )
        extra.append(p)
    extra[7]["name"] = "Bob's 'quoted' mug"
    data["products"] = data["products"] + extra
    return Scenario.model_validate(data)


@pytest.fixture
def many(sandbox: Sandbox, api: httpx.Client) -> httpx.Client:
    sandbox.load(many_products_scenario(620))
    return api


def test_top_defaults_to_500_and_is_capped_at_5000(many: httpx.Client) -> None:
    assert len(ok(many.get("/products"))) == 500
    assert len(ok(many.get("/products", params={"$top": "5000"}))) == 630
    assert len(ok(many.get("/products", params={"$top": "3"}))) == 3
    resp = many.get("/products", params={"$top": "5001"})
    assert resp.status_code == 400 and "$top" in body(resp)["message"]
    resp = many.get("/products", params={"$top": "-1"})
    assert resp.status_code == 400


def test_skip_needs_orderby_and_pages_cleanly(many: httpx.Client) -> None:
    resp = many.get("/products", params={"$skip": "10"})
    assert resp.status_code == 400 and "$orderby" in body(resp)["message"]
    seen: list[str] = []
    for skip in range(0, 700, 200):
        page = ok(many.get("/products", params={"$orderby": "code desc", "$top": "200", "$skip": str(skip)}))
        seen += [p["code"] for p in page]
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 630


def test_filter_operators_are_exact(many: httpx.Client) -> None:
    def codes(expr: str, **extra: str) -> set[str]:
        return {
            p["code"] for p in ok(many.get("/products", params={"$filter": expr, "$top": "5000", **extra}))
        }

    every = ok(many.get("/products", params={"$top": "5000"}))
    cost = {p["code"]: p["standard_cost"] for p in every}
    # 4.2 and 4.20 are the same number; gt 4.2 is strictly greater (no float rounding)
    assert codes("standard_cost eq 4.2") == {c for c, v in cost.items() if v == Decimal("4.2")}
    assert codes("standard_cost gt 4.2") == {c for c, v in cost.items() if v > Decimal("4.2")}
    assert codes("standard_cost le 1.125") == {c for c, v in cost.items() if v <= Decimal("1.125")}
    assert codes("standard_cost ne 0.125 and standard_cost lt 2") == {
        c for c, v in cost.items() if v != Decimal("0.125") and v < 2
    }
    assert codes("(code eq 'MUG-STONE' or code eq 'TISSUE') and not (id eq 0)") == {"MUG-STONE", "TISSUE"}
    assert codes("startswith(code,'TSHIRT')") == {"TSHIRT-BLK-M", "TSHIRT-WHT-L"}
    assert codes("endswith(code, '-M')") == {c for c in cost if c.endswith("-M")}
    assert codes("contains(name,'Bob''s ''quoted''')") == {"BULK-00007"}
    assert codes("name eq 'Bob''s ''quoted'' mug'") == {"BULK-00007"}
    assert codes("contains(code,'%')") == set()  # wildcards are literal
    ids = sorted(p["id"] for p in every)
    assert codes(f"id ge {ids[-3]}") == {p["code"] for p in every if p["id"] >= ids[-3]}


def test_filter_on_datetimes_needs_utc(api: httpx.Client, sandbox: Sandbox) -> None:
    orders = ok(api.get("/sop_orders"))
    dates = sorted(o["document_date"] for o in orders)
    later = [o for o in orders if o["document_date"] > dates[4]]
    got = ok(api.get("/sop_orders", params={"$filter": f"document_date gt {dates[4]}"}))
    assert {o["id"] for o in got} == {o["id"] for o in later}
    day = dates[0][:10]
    assert len(ok(api.get("/sop_orders", params={"$filter": f"document_date ge {day}"}))) == len(orders)
    resp = api.get("/sop_orders", params={"$filter": "document_date gt 2026-11-23T08:00:00"})
    assert resp.status_code == 400 and "'Z'" in body(resp)["message"]


def test_incremental_reads_by_date_time_updated(api: httpx.Client) -> None:
    newest = max(o["date_time_updated"] for o in ok(api.get("/sop_orders")))
    assert ok(api.get("/sop_orders", params={"$filter": f"date_time_updated gt {newest}"})) == []
    order = ok(api.get("/sop_orders", params={"$filter": "document_no eq 'SO0001001'", "$expand": "lines"}))[
        0
    ]
    line = order["lines"][0]
    ok(
        api.post(
            "/sop_confirm_despatch",
            content=jsonutil.dumps(
                {"sop_order_return_id": order["id"], "items": [{"id": line["id"], "quantity": 1}]}
            ),
        )
    )
    changed = ok(api.get("/sop_orders", params={"$filter": f"date_time_updated gt {newest}"}))
    assert [o["document_no"] for o in changed] == ["SO0001001"]
    holdings = ok(api.get("/warehouse_holdings", params={"$filter": f"date_time_updated gt {newest}"}))
    assert [(h["product_id"], h["warehouse_id"]) for h in holdings] == [
        (line["product_id"], line["warehouse_id"])
    ]
    moves = ok(api.get("/product_transaction_views", params={"$filter": f"date_time_updated gt {newest}"}))
    assert len(moves) == 1 and moves[0]["reference"] == "SO0001001"


def test_orderby_select_and_expand(api: httpx.Client) -> None:
    rows = ok(api.get("/warehouse_holdings", params={"$orderby": "warehouse_id asc, quantity_in_stock desc"}))
    keys = [(h["warehouse_id"], -h["quantity_in_stock"]) for h in rows]
    assert keys == sorted(keys)
    picked = ok(api.get("/products", params={"$select": "id,code", "$top": "2"}))
    assert all(set(p) == {"id", "code"} for p in picked)
    plain = ok(api.get("/sop_orders", params={"$top": "1"}))[0]
    assert "lines" not in plain
    expanded = ok(api.get("/sop_orders", params={"$top": "1", "$expand": "lines"}))[0]
    assert expanded["lines"] and all(ln["sop_order_id"] == expanded["id"] for ln in expanded["lines"])


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"$filter": "colour eq 'red'"}, "colour"),
        ({"$filter": "code eq 'x' and"}, "position"),
        ({"$filter": "(code eq 'x'"}, "')'"),
        ({"$filter": "code eq 'unterminated"}, "unterminated"),
        ({"$filter": "code gt 5"}, "code"),
        ({"$filter": "standard_cost eq 'abc'"}, "standard_cost"),
        ({"$filter": "code like 'x'"}, "comparison operator"),
        ({"$orderby": "code sideways"}, "direction"),
        ({"$orderby": "nope"}, "nope"),
        ({"$select": "id,nope"}, "nope"),
        ({"$expand": "suppliers"}, "suppliers"),
        ({"$frobnicate": "1"}, "$frobnicate"),
    ],
)
def test_bad_queries_get_400_naming_the_problem(
    api: httpx.Client, params: dict[str, str], named: str
) -> None:
    resp = api.get("/products", params=params)
    assert resp.status_code == 400
    assert named in body(resp)["message"]


# --- auth -----------------------------------------------------------------------------------------


def test_auth_failures_are_401_with_an_empty_body(sandbox: Sandbox) -> None:
    token = get_token(sandbox.sage_url).json()["access_token"]
    url = sandbox.sage_url + BASE + "/products"
    good = headers(token)
    cases = [
        {k: v for k, v in good.items() if k != "Authorization"},
        {**good, "Authorization": "Bearer not-a-token"},
        {**good, "X-Site": "00000000-0000-0000-0000-000000000000"},
        {**good, "X-Company": "2"},
        {k: v for k, v in good.items() if k != "X-Company"},
    ]
    for case in cases:
        resp = httpx.get(url, headers=case)
        assert resp.status_code == 401 and resp.content == b"", case
    assert httpx.get(url, headers=good).status_code == 200
    sites = httpx.get(sandbox.sage_url + BASE + "/sites", headers={"Authorization": f"Bearer {token}"})
    assert sites.status_code == 200 and sites.json()[0]["site_id"] == SITE_ID


def test_refresh_tokens_rotate_and_work_once(sandbox: Sandbox) -> None:
    first = get_token(sandbox.sage_url, grant_type="refresh_token", refresh_token="sandbox-refresh")
    assert first.status_code == 200, first.text
    again = get_token(sandbox.sage_url, grant_type="refresh_token", refresh_token="sandbox-refresh")
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    second = get_token(
        sandbox.sage_url, grant_type="refresh_token", refresh_token=first.json()["refresh_token"]
    )
    assert second.status_code == 200 and second.json()["refresh_token"] != first.json()["refresh_token"]
    assert second.json()["expires_in"] > 0
    bad_client = get_token(sandbox.sage_url, client_secret="wrong")
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
    bad_grant = get_token(sandbox.sage_url, grant_type="password")
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"


def test_expired_tokens_are_refused(sandbox: Sandbox) -> None:
    url = sandbox.sage_url + BASE + "/warehouses"
    token = get_token(sandbox.sage_url).json()["access_token"]
    assert admin(sandbox, "faults", {"expire_next_tokens": 1}).status_code == 200
    assert httpx.get(url, headers=headers(token)).status_code == 401
    assert httpx.get(url, headers=headers(token)).status_code == 401  # it stays expired
    fresh = get_token(sandbox.sage_url).json()["access_token"]
    assert httpx.get(url, headers=headers(fresh)).status_code == 200
    # a short configured lifetime is enforced
    admin(sandbox, "faults", {"access_token_seconds": 1})
    short = get_token(sandbox.sage_url).json()
    assert short["expires_in"] == 1
    assert httpx.get(url, headers=headers(short["access_token"])).status_code == 200
    time.sleep(1.2)
    assert httpx.get(url, headers=headers(short["access_token"])).status_code == 401


# --- persistence ----------------------------------------------------------------------------------


def test_state_survives_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    box = start_sandbox(data_dir, with_wms=False)
    try:
        token = get_token(box.sage_url).json()["access_token"]
        with httpx.Client(base_url=box.sage_url + BASE, headers=headers(token)) as api:
            order = ok(
                api.get("/sop_orders", params={"$filter": "document_no eq 'SO0001001'", "$expand": "lines"})
            )[0]
            ok(
                api.post(
                    "/sop_confirm_despatch",
                    content=jsonutil.dumps(
                        {
                            "sop_order_return_id": order["id"],
                            "items": [
                                {"id": ln["id"], "quantity": ln["line_quantity"]} for ln in order["lines"]
                            ],
                        }
                    ),
                )
            )
            before = ok(api.get("/warehouse_holdings"))
    finally:
        box.stop()
    box = start_sandbox(data_dir, with_wms=False)
    try:
        with httpx.Client(
            base_url=box.sage_url + BASE, headers=headers(token)
        ) as api:  # the token survives too
            after = ok(api.get(f"/sop_orders/{order['id']}"))
            assert after["document_status"] == "EnumDocumentStatusComplete"
            assert ok(api.get("/warehouse_holdings")) == before
    finally:
        box.stop()
