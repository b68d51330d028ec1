"""Sage 200 simulator business rules over real HTTP: despatch, costing, allocation, locks, faults,
stocktakes, returns, and bad input that changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import (
    CostLayer,
    Customer,
    OpeningStock,
    OrderLine,
    Product,
    ProductGroup,
    Receipt,
    SageSettings,
    SalesOrder,
    Scenario,
    Warehouse,
)
from sage_wms_pipeline.simulators.sage200.app import BASE
from sage_wms_pipeline.simulators.sage200.store import SITE_ID
from sage_wms_pipeline_tests.conftest import Sandbox, start_sandbox

T0 = datetime(2026, 11, 23, 8, tzinfo=UTC)
FIFO_LAYERS = [  # listed newest first on purpose: the simulator must sort by received date
    CostLayer(quantity=Decimal(6), unit_cost=Decimal("5.50"), received=T0 - timedelta(days=5)),
    CostLayer(quantity=Decimal(4), unit_cost=Decimal("4.00"), received=T0 - timedelta(days=30)),
]


def costing_scenario(allocate: bool = True) -> Scenario:
    return Scenario(
        name="costing",
        starts_at=T0,
        sage=SageSettings(allocate_stock_on_order_entry=allocate),
        product_groups=[
            ProductGroup(code="FIFOG", name="FIFO goods", costing_method="FIFO"),
            ProductGroup(code="AVG", name="Average goods", costing_method="Average"),
            ProductGroup(code="STD", name="Standard goods", costing_method="Standard"),
        ],
        products=[
            Product(
                sku="F1",
                name="FIFO item",
                group="FIFOG",
                unit_cost=Decimal("5.00"),
                selling_price=Decimal(12),
            ),
            Product(
                sku="A1",
                name="Average item",
                group="AVG",
                unit_cost=Decimal("3.33333"),
                selling_price=Decimal(9),
            ),
            Product(
                sku="S1",
                name="Standard item",
                group="STD",
                unit_cost=Decimal("2.50"),
                selling_price=Decimal(6),
            ),
        ],
        warehouses=[Warehouse(sage_name="MAIN", wms_warehouse_id=1, wms_name="Main DC")],
        opening_stock=[
            OpeningStock(sku="F1", warehouse="MAIN", sage_confirmed=Decimal(10), fifo_layers=FIFO_LAYERS),
            OpeningStock(sku="A1", warehouse="MAIN", sage_confirmed=Decimal(20)),
            OpeningStock(sku="S1", warehouse="MAIN", sage_confirmed=Decimal(15)),
        ],
        customers=[Customer(account="C1", name="Customer one"), Customer(account="C2", name="Customer two")],
        orders=[
            order("O-F", [std("F1", 7)]),
            order("O-A", [std("A1", 3)]),
            order("O-S", [std("S1", 4)]),
            order("O-HOLD", [std("A1", 1)], status="OnHold"),
            order("O-CANC", [std("A1", 1)], status="Cancelled"),
            order("O-DRAFT", [std("A1", 1)], status="Draft"),
            order(
                "O-MIX",
                [
                    std("S1", 2),
                    OrderLine(line_type="Comment", description="Leave at door"),
                    OrderLine(
                        line_type="Charge",
                        quantity=Decimal(1),
                        unit_price=Decimal("4.95"),
                        description="Carriage",
                    ),
                    OrderLine(
                        line_type="FreeText",
                        quantity=Decimal(1),
                        unit_price=Decimal(2),
                        description="Gift message",
                    ),
                ],
            ),
            order("O-BIG", [std("A1", 30)]),  # more than in stock: only 20 - 3 can be allocated
        ],
        receipts=[
            Receipt(
                reference="ASN-0",
                sku="F1",
                warehouse="MAIN",
                quantity=Decimal(5),
                unit_cost=Decimal(6),
                expected=T0 - timedelta(days=1),
                booked_in_wms=True,
                posted_to_sage=True,
            ),
            Receipt(
                reference="ASN-1",
                sku="A1",
                warehouse="MAIN",
                quantity=Decimal(10),
                unit_cost=Decimal(4),
                expected=T0,
                booked_in_wms=True,
                posted_to_sage=False,
            ),
        ],
    )


def order(no: str, lines: list[OrderLine], status: str = "Live") -> SalesOrder:
    return SalesOrder(document_no=no, customer="C1", document_date=T0, status=status, lines=lines)  # type: ignore[arg-type]


def std(sku: str, qty: int) -> OrderLine:
    return OrderLine(sku=sku, warehouse="MAIN", quantity=Decimal(qty), unit_price=Decimal(10))


def fifo_cost(layers: list[CostLayer], qty: Decimal, already_taken: Decimal = Decimal(0)) -> Decimal:
    """Expected FIFO cost of issuing `qty` after `already_taken` left the oldest layers."""
    total, skip, left = Decimal(0), already_taken, qty
    for layer in sorted(layers, key=lambda x: x.received):
        avail = layer.quantity
        used = min(avail, skip)
        skip -= used
        avail -= used
        take = min(avail, left)
        total += take * layer.unit_cost
        left -= take
    return total


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(tmp_path_factory.mktemp("sage200-rules") / "state", with_wms=False)
    yield box
    box.stop()


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    sandbox.load(costing_scenario())
    token = httpx.post(
        sandbox.sage_url + "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "client_id": "sandbox",
            "client_secret": "sandbox",
            "code": "sandbox-code",
        },
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "X-Site": SITE_ID, "X-Company": "1"}
    with httpx.Client(base_url=sandbox.sage_url + BASE, headers=headers, timeout=60) as client:
        yield client


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return jsonutil.loads(resp.content)


def post(api: httpx.Client, path: str, payload: object) -> httpx.Response:
    return api.post(path, content=jsonutil.dumps(payload))


def admin(sandbox: Sandbox, path: str, payload: object) -> Any:
    resp = httpx.post(sandbox.sage_url + "/_sandbox/" + path, content=jsonutil.dumps(payload), timeout=60)
    assert resp.status_code == 200, resp.text
    return jsonutil.loads(resp.content)


def get_order(api: httpx.Client, no: str) -> dict[str, Any]:
    return ok(api.get("/sop_orders", params={"$filter": f"document_no eq '{no}'", "$expand": "lines"}))[0]


def holding(api: httpx.Client, code: str) -> dict[str, Any]:
    product = ok(api.get("/products", params={"$filter": f"code eq '{code}'"}))[0]
    return ok(api.get(f"/products/{product['id']}/warehouse_holdings"))[0]


def snapshot(api: httpx.Client) -> Any:
    """Everything a refused write must leave alone."""
    strip = ("date_time_updated",)
    orders = [
        {k: v for k, v in o.items() if k not in strip}
        for o in ok(api.get("/sop_orders", params={"$expand": "lines"}))
    ]
    for o in orders:
        o["lines"] = [{k: v for k, v in ln.items() if k not in strip} for ln in o["lines"]]
    return (
        orders,
        ok(api.get("/warehouse_holdings")),
        ok(api.get("/product_transaction_views")),
        ok(api.get("/sop_despatch_receipts")),
    )


def despatch_all(api: httpx.Client, no: str) -> httpx.Response:
    o = get_order(api, no)
    items = [
        {"id": ln["id"], "quantity": ln["line_quantity"]}
        for ln in o["lines"]
        if ln["line_type"] in ("EnumLineTypeStandard", "EnumLineTypeFreeText")
    ]
    return post(api, "/sop_confirm_despatch", {"sop_order_return_id": o["id"], "items": items})


# --- despatch and costing -------------------------------------------------------------------------


@pytest.mark.parametrize("no", ["O-F", "O-A", "O-S"])
def test_despatch_lowers_stock_and_books_a_costed_movement(api: httpx.Client, no: str) -> None:
    sc = costing_scenario()
    sales = next(o for o in sc.orders if o.document_no == no)
    sku, qty = sales.lines[0].sku, sales.lines[0].quantity
    assert sku is not None
    product = sc.product(sku)
    method = next(g.costing_method for g in sc.product_groups if g.code == product.group)
    expected_cost = fifo_cost(FIFO_LAYERS, qty) if method == "FIFO" else qty * product.unit_cost
    before = holding(api, sku)

    result = ok(despatch_all(api, no))
    assert result["items"][0]["quantity"] == qty

    after = holding(api, sku)
    assert after["confirmed_qty_in_stock"] == before["confirmed_qty_in_stock"] - qty
    assert after["quantity_allocated_sop"] == before["quantity_allocated_sop"] - qty
    assert after["free_stock_available"] == before["free_stock_available"]
    move = ok(api.get("/product_transaction_views", params={"$filter": f"reference eq '{no}'"}))
    assert len(move) == 1
    assert move[0]["transaction_type"] == "Goods Out" and move[0]["warehouse_name"] == "MAIN"
    assert move[0]["quantity"] == -qty
    assert move[0]["cost_value"] == -expected_cost
    assert move[0]["unit_cost_price"] == (expected_cost / qty).quantize(Decimal("0.00001"), ROUND_HALF_UP)
    assert move[0]["source_area_type_id"] == 2 and move[0]["source_area_reference"] == "C1"
    done = get_order(api, no)
    assert done["document_status"] == "EnumDocumentStatusComplete"
    assert done["lines"][0]["despatch_receipt_quantity"] == qty
    assert done["lines"][0]["despatch_receipt_status"] == "Fully"
    views = ok(
        api.get("/sop_order_despatch_line_views", params={"$filter": f"sop_order_document_no eq '{no}'"})
    )
    assert [v["sop_despatch_line_quantity"] for v in views] == [qty]
    receipts = ok(api.get("/sop_despatch_receipts"))
    assert views[0]["sop_despatch_document_no"] in {r["despatch_no"] for r in receipts}


def test_fifo_layers_are_consumed_oldest_first_across_despatches(api: httpx.Client) -> None:
    o = get_order(api, "O-F")
    line = o["lines"][0]
    first, second = Decimal(3), line["line_quantity"] - Decimal(3)
    ok(
        post(
            api,
            "/sop_confirm_despatch",
            {"sop_order_return_id": o["id"], "items": [{"id": line["id"], "quantity": first}]},
        )
    )
    partial = get_order(api, "O-F")
    assert partial["document_status"] == "EnumDocumentStatusLive"
    assert partial["lines"][0]["despatch_receipt_status"] == "Partially"
    assert partial["lines"][0]["available_for_despatch"] == second
    ok(
        post(
            api,
            "/sop_confirm_despatch",
            {"sop_order_return_id": o["id"], "items": [{"id": line["id"], "quantity": second}]},
        )
    )
    moves = ok(
        api.get("/product_transaction_views", params={"$filter": "reference eq 'O-F'", "$orderby": "id"})
    )
    assert [m["cost_value"] for m in moves] == [
        -fifo_cost(FIFO_LAYERS, first),
        -fifo_cost(FIFO_LAYERS, second, already_taken=first),
    ]
    assert get_order(api, "O-F")["document_status"] == "EnumDocumentStatusComplete"


def test_mixed_order_completes_when_goods_lines_are_despatched(api: httpx.Client) -> None:
    o = get_order(api, "O-MIX")
    assert [ln["line_type"] for ln in o["lines"]] == [
        "EnumLineTypeStandard",
        "EnumLineTypeComment",
        "EnumLineTypeCharge",
        "EnumLineTypeFreeText",
    ]
    listed = ok(api.get("/sop_confirm_despatch", params={"$filter": "document_no eq 'O-MIX'"}))
    assert [i["id"] for i in listed[0]["items"]] == [o["lines"][0]["id"], o["lines"][3]["id"]]
    ok(despatch_all(api, "O-MIX"))
    done = get_order(api, "O-MIX")
    assert done["document_status"] == "EnumDocumentStatusComplete"
    # only the standard line moved stock
    assert len(ok(api.get("/product_transaction_views", params={"$filter": "reference eq 'O-MIX'"}))) == 1


def _item(api: httpx.Client, no: str, index: int = 0, qty: Decimal | None = None) -> dict[str, Any]:
    o = get_order(api, no)
    line = o["lines"][index]
    return {
        "sop_order_return_id": o["id"],
        "items": [{"id": line["id"], "quantity": line["line_quantity"] if qty is None else qty}],
    }


REFUSALS: list[tuple[str, Any, str, str | None]] = [
    ("on hold", lambda api: _item(api, "O-HOLD"), "on hold", "sop_order_return_id"),
    ("cancelled", lambda api: _item(api, "O-CANC"), "cancelled", "sop_order_return_id"),
    ("draft", lambda api: _item(api, "O-DRAFT"), "draft", "sop_order_return_id"),
    ("more than allocated", lambda api: _item(api, "O-BIG"), "allocated", "items[0].quantity"),
    (
        "more than outstanding",
        lambda api: _item(api, "O-A", qty=Decimal(4)),
        "outstanding",
        "items[0].quantity",
    ),
    ("zero", lambda api: _item(api, "O-A", qty=Decimal(0)), "greater than 0", "items[0].quantity"),
    ("negative", lambda api: _item(api, "O-A", qty=Decimal(-1)), "greater than 0", "items[0].quantity"),
    ("comment line", lambda api: _item(api, "O-MIX", 1, Decimal(1)), "comment line", "items[0].id"),
    ("charge line", lambda api: _item(api, "O-MIX", 2, Decimal(1)), "charge line", "items[0].id"),
    (
        "another order's line",
        lambda api: {**_item(api, "O-A"), "sop_order_return_id": get_order(api, "O-S")["id"]},
        "has no line",
        "items[0].id",
    ),
    (
        "unknown order",
        lambda api: {**_item(api, "O-A"), "sop_order_return_id": 999999},
        "no sales order",
        "sop_order_return_id",
    ),
    ("no items", lambda api: {**_item(api, "O-A"), "items": []}, "at least 1", "items"),
    (
        "same line twice",
        lambda api: {
            **_item(api, "O-S", qty=Decimal(1)),
            "items": _item(api, "O-S", qty=Decimal(1))["items"] * 2,
        },
        "more than once",
        "items[1].id",
    ),
    (
        "consignment too long",
        lambda api: {**_item(api, "O-A"), "tracking_items": [{"consignment_no": "X" * 61}]},
        "at most 60",
        "tracking_items[0].consignment_no",
    ),
    (
        "quantity not a number",
        lambda api: {**_item(api, "O-A"), "items": [{"id": 1, "quantity": "lots"}]},
        "decimal",
        "items[0].quantity",
    ),
]


@pytest.mark.parametrize(("case", "make", "says", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_despatch_refusals_name_the_field_and_change_nothing(
    api: httpx.Client, case: str, make: Any, says: str, field: str | None
) -> None:
    payload = make(api)
    before = snapshot(api)
    resp = post(api, "/sop_confirm_despatch", payload)
    assert resp.status_code == 400, resp.text
    err = jsonutil.loads(resp.content)
    assert says in err["message"] and err["field"] == field
    assert snapshot(api) == before


def test_despatch_of_a_complete_order_and_malformed_json_are_refused(api: httpx.Client) -> None:
    ok(despatch_all(api, "O-S"))
    resp = despatch_all(api, "O-S")
    assert resp.status_code == 400 and "complete" in resp.json()["message"]
    resp = api.post("/sop_confirm_despatch", content=b"{not json")
    assert resp.status_code == 400 and resp.json()["field"] == "body"


def test_despatch_without_stock_update_leaves_levels_alone(api: httpx.Client, sandbox: Sandbox) -> None:
    admin(sandbox, "settings", {"update_stock_on_despatch": False})
    assert ok(api.get("/sop_settings"))[0]["update_stock_on_despatch"] is False
    before = holding(api, "A1")
    ok(despatch_all(api, "O-A"))
    after = holding(api, "A1")
    assert after["quantity_in_stock"] == before["quantity_in_stock"]
    assert after["quantity_allocated_sop"] == before["quantity_allocated_sop"] - 3
    assert ok(api.get("/product_transaction_views", params={"$filter": "reference eq 'O-A'"})) == []


def test_without_allocation_on_entry_nothing_despatches_until_allocated(
    api: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.load(costing_scenario(allocate=False))
    assert ok(api.get("/sop_settings"))[0]["allocate_stock_on_order_entry"] is False
    o = get_order(api, "O-A")
    line = o["lines"][0]
    assert line["allocated_quantity"] == 0 and line["to_allocate_quantity"] == 3
    assert ok(api.get("/sop_confirm_despatch", params={"$filter": "document_no eq 'O-A'"})) == []
    resp = post(api, "/sop_confirm_despatch", _item(api, "O-A"))
    assert resp.status_code == 400 and resp.json()["field"] == "items[0].quantity"
    too_much = api.put(
        f"/sop_orders/{o['id']}",
        content=jsonutil.dumps({"lines": [{"id": line["id"], "to_allocate_quantity": 4}]}),
    )
    assert too_much.status_code == 400 and too_much.json()["field"] == "lines[0].to_allocate_quantity"
    amended = ok(
        api.put(
            f"/sop_orders/{o['id']}",
            content=jsonutil.dumps({"lines": [{"id": line["id"], "to_allocate_quantity": 3}]}),
        )
    )
    assert amended["lines"][0]["allocated_quantity"] == 3
    assert holding(api, "A1")["quantity_allocated_sop"] == 3
    ok(despatch_all(api, "O-A"))


def test_new_orders_are_allocated_on_entry_and_bad_ones_refused(api: httpx.Client) -> None:
    products = {p["code"]: p["id"] for p in ok(api.get("/products"))}
    customer = ok(api.get("/customers"))[0]["id"]
    free_before = holding(api, "S1")["free_stock_available"]
    good = {
        "customer_id": customer,
        "customer_document_no": "WEB-1",
        "lines": [
            {
                "line_type": "EnumLineTypeStandard",
                "product_id": products["S1"],
                "warehouse_id": 1,
                "line_quantity": 2,
                "selling_unit_price": Decimal("6.00"),
            },
            {"line_type": "EnumLineTypeComment", "description": "Fragile"},
        ],
    }
    created = ok(post(api, "/sop_orders", good))
    assert created["document_status"] == "EnumDocumentStatusLive"
    assert created["lines"][0]["allocated_quantity"] == 2
    assert created["total_net_value"] == Decimal("12.00")
    assert holding(api, "S1")["free_stock_available"] == free_before - 2
    before = snapshot(api)
    for payload, field in [
        ({**good, "lines": [{**good["lines"][0], "product_id": 999}]}, "lines[0].product_id"),
        ({**good, "customer_id": 999}, "customer_id"),
        ({**good, "document_no": "X" * 21}, "document_no"),
        (
            {**good, "lines": [good["lines"][0], {**good["lines"][0], "line_quantity": -1}]},
            "lines[1].line_quantity",
        ),
        ({**good, "lines": [{"line_type": "EnumLineTypeBogus"}]}, "lines[0].line_type"),
    ]:
        resp = post(api, "/sop_orders", payload)
        assert resp.status_code == 400, resp.text
        assert resp.json()["field"] == field
    assert snapshot(api) == before


# --- locks ----------------------------------------------------------------------------------------


def test_an_order_held_open_is_refused_until_released(api: httpx.Client, sandbox: Sandbox) -> None:
    admin(sandbox, "locks", {"document_no": "O-A", "seconds": 1})
    before = snapshot(api)
    resp = despatch_all(api, "O-A")
    assert resp.status_code == 400 and "in use by another user" in resp.json()["message"]
    assert snapshot(api) == before
    time.sleep(1.2)
    ok(despatch_all(api, "O-A"))


def test_lock_status_text_and_random_locks_are_configurable(api: httpx.Client, sandbox: Sandbox) -> None:
    admin(sandbox, "faults", {"lock_status": 409, "lock_message": "Record {document_no} is locked by ANNA"})
    admin(sandbox, "locks", {"document_no": "O-S", "seconds": 30})
    resp = despatch_all(api, "O-S")
    assert resp.status_code == 409 and resp.json()["message"] == "Record O-S is locked by ANNA"
    assert httpx.delete(sandbox.sage_url + "/_sandbox/locks/O-S").json() == {"released": True}
    admin(sandbox, "faults", {"lock_rate": 1, "lock_seconds": 30})
    assert despatch_all(api, "O-A").status_code == 409
    admin(sandbox, "faults", {"lock_rate": 0})
    assert despatch_all(api, "O-A").status_code == 409  # the random lock is held for lock_seconds
    locks = httpx.get(sandbox.sage_url + "/_sandbox/locks").json()
    assert [(lk["document_no"], lk["source"]) for lk in locks] == [("O-A", "random")]
    # What was served is counted, so a benchmark can report the locks the pipeline met.
    served = httpx.get(sandbox.sage_url + "/_sandbox/state").json()["faults_served"]
    assert served == {"lock_started": 1, "refused_desktop_lock": 1, "refused_random_lock": 2}
    httpx.delete(sandbox.sage_url + "/_sandbox/locks/O-A")
    ok(despatch_all(api, "O-A"))


def test_api_edit_lock_from_is_to_lock(api: httpx.Client) -> None:
    o = get_order(api, "O-A")
    locked = ok(api.get(f"/sop_orders/{o['id']}", params={"$expand": "is_to_lock"}))
    lock_id = locked["lock_id"]
    assert isinstance(lock_id, int) and locked["is_editing"] is True
    resp = despatch_all(api, "O-A")
    assert resp.status_code == 400 and "in use" in resp.json()["message"]
    wrong = api.put(
        f"/sop_orders/{o['id']}", content=jsonutil.dumps({"lock_id": lock_id + 1, "is_editing": False})
    )
    assert wrong.status_code == 400
    released = ok(
        api.put(
            f"/sop_orders/{o['id']}",
            content=jsonutil.dumps(
                {"lock_id": lock_id, "is_editing": False, "customer_document_no": "PO-77"}
            ),
        )
    )
    assert released["is_editing"] is False and released["customer_document_no"] == "PO-77"
    ok(despatch_all(api, "O-A"))


# --- faults ---------------------------------------------------------------------------------------


def test_faults_are_seeded_and_shaped_like_the_gateway(api: httpx.Client, sandbox: Sandbox) -> None:
    def statuses() -> list[int]:
        return [api.get("/warehouses").status_code for _ in range(16)]

    admin(sandbox, "faults", {"seed": 7, "rate_429": Decimal("0.5"), "retry_after_seconds": 3})
    first = statuses()
    admin(sandbox, "faults", {"seed": 7})
    assert statuses() == first and set(first) == {200, 429}
    resp = next(r for r in (api.get("/warehouses") for _ in range(50)) if r.status_code == 429)
    assert resp.headers["Retry-After"] == "3"
    admin(sandbox, "faults", {"rate_429": 0, "rate_504": 1})
    assert api.get("/warehouses").status_code == 504
    admin(sandbox, "faults", {"rate_504": 0, "rate_5xx": 1})
    assert api.get("/warehouses").status_code == 503
    shown = httpx.get(sandbox.sage_url + "/_sandbox/faults").json()
    assert shown["rate_5xx"] == 1 and shown["seed"] == 7
    bad = httpx.post(sandbox.sage_url + "/_sandbox/faults", json={"rate_429": 2})
    assert bad.status_code == 400 and bad.json()["field"] == "rate_429"
    sandbox.reset()
    assert httpx.get(sandbox.sage_url + "/_sandbox/faults").json()["rate_5xx"] == 0


def test_a_dropped_response_still_applies_the_write(api: httpx.Client, sandbox: Sandbox) -> None:
    admin(sandbox, "drop_next_response", {"method": "POST", "path_contains": "sop_confirm_despatch"})
    before = holding(api, "S1")
    resp = despatch_all(api, "O-S")
    assert resp.status_code == 504
    assert get_order(api, "O-S")["document_status"] == "EnumDocumentStatusComplete"
    assert holding(api, "S1")["quantity_in_stock"] == before["quantity_in_stock"] - 4
    assert despatch_all(api, "O-S").status_code == 400  # the rule was used up; the retry meets the truth


# --- stocktakes and returns -----------------------------------------------------------------------


def test_stocktake_workflow_adjusts_levels_with_costed_movements(api: httpx.Client) -> None:
    new = ok(post(api, "/stocktake_new_items", {"warehouse_id": 1}))
    assert {i["item_code"] for i in new["stocktake_items"]} == {"F1", "A1", "S1"}
    chosen = [dict(i, is_selected=i["item_code"] in ("F1", "S1")) for i in new["stocktake_items"]]
    stocktake = ok(
        post(api, "/stocktakes", {"warehouse_id": 1, "stocktake_name": "Year end", "stocktake_items": chosen})
    )
    assert stocktake["stocktake_status"] == "Enter Values"
    sheet = {
        i["item_code"]: i
        for i in ok(post(api, "/stocktake_enter_values", {"id": stocktake["id"]}))[
            "stocktake_count_sheet_items"
        ]
    }
    recorded_f1, recorded_s1 = (
        sheet["F1"]["recorded_quantity_in_stock"],
        sheet["S1"]["recorded_quantity_in_stock"],
    )
    bad = api.put(
        f"/stocktake_count_sheet_items/{sheet['F1']['id']}",
        content=jsonutil.dumps({"actual_quantity_in_stock": -1}),
    )
    assert bad.status_code == 400 and bad.json()["field"] == "actual_quantity_in_stock"
    early = post(api, "/stocktake_approve_complete", {"id": stocktake["id"]})
    assert early.status_code == 400 and "view adjustments" in early.json()["message"]
    ok(
        api.put(
            f"/stocktake_count_sheet_items/{sheet['F1']['id']}",
            content=jsonutil.dumps({"actual_quantity_in_stock": recorded_f1 + 2}),
        )
    )
    ok(
        api.put(
            f"/stocktake_count_sheet_items/{sheet['S1']['id']}",
            content=jsonutil.dumps({"actual_quantity_in_stock": recorded_s1 - 3}),
        )
    )
    ok(despatch_all(api, "O-S"))  # movement after the count must survive the adjustment
    review = ok(post(api, "/stocktake_view_adjustments", {"id": stocktake["id"]}))
    assert {i["item_code"] for i in review["stocktake_count_sheet_items"]} == {"F1", "S1"}
    done = ok(post(api, "/stocktake_approve_complete", {"id": stocktake["id"], "advance_status": True}))
    assert done["stocktake_status"] == "Complete"
    assert holding(api, "F1")["confirmed_qty_in_stock"] == recorded_f1 + 2
    assert holding(api, "S1")["confirmed_qty_in_stock"] == recorded_s1 - 3 - 4
    sc = costing_scenario()
    moves = {
        m["product_code"]: m
        for m in ok(
            api.get("/product_transaction_views", params={"$filter": "transaction_type eq 'Stock Take'"})
        )
    }
    assert moves["F1"]["quantity"] == 2 and moves["F1"]["cost_value"] == 2 * sc.product("F1").unit_cost
    assert moves["S1"]["quantity"] == -3 and moves["S1"]["cost_value"] == -3 * sc.product("S1").unit_cost
    again = post(api, "/stocktake_approve_complete", {"id": stocktake["id"]})
    assert again.status_code == 400


def test_returns_with_restock_book_stock_back_in(api: httpx.Client) -> None:
    products = {p["code"]: p["id"] for p in ok(api.get("/products"))}
    before_a, before_s = holding(api, "A1"), holding(api, "S1")
    created = ok(
        post(
            api,
            "/sop_returns",
            {
                "customer_id": 1,
                "lines": [
                    {
                        "product_id": products["A1"],
                        "warehouse_id": 1,
                        "line_quantity": 2,
                        "selling_unit_price": 9,
                    },
                    {
                        "product_id": products["S1"],
                        "warehouse_id": 1,
                        "line_quantity": 1,
                        "selling_unit_price": 6,
                        "restock": False,
                    },
                ],
            },
        )
    )
    assert [ln["restock"] for ln in created["lines"]] == [True, False]
    assert holding(api, "A1")["confirmed_qty_in_stock"] == before_a["confirmed_qty_in_stock"] + 2
    assert holding(api, "S1")["confirmed_qty_in_stock"] == before_s["confirmed_qty_in_stock"]
    moves = ok(
        api.get("/product_transaction_views", params={"$filter": f"reference eq '{created['document_no']}'"})
    )
    assert [(m["transaction_type"], m["quantity"]) for m in moves] == [("Goods Returned", 2)]
    listed = ok(api.get("/sop_returns", params={"$expand": "lines"}))
    assert [r["document_no"] for r in listed] == [created["document_no"]] and len(listed[0]["lines"]) == 2
    before = snapshot(api)
    resp = post(
        api,
        "/sop_returns",
        {
            "customer_id": 1,
            "lines": [
                {"product_id": products["A1"], "warehouse_id": 1, "line_quantity": 1},
                {"product_id": 999, "warehouse_id": 1, "line_quantity": 1},
            ],
        },
    )
    assert resp.status_code == 400 and resp.json()["field"] == "lines[1].product_id"
    assert snapshot(api) == before


# --- scenario loading -----------------------------------------------------------------------------


def test_a_bad_scenario_is_refused_and_loads_nothing(api: httpx.Client, sandbox: Sandbox) -> None:
    data = costing_scenario().model_dump(mode="python")
    data["products"][1]["group"] = "NOPE"
    resp = httpx.post(sandbox.sage_url + "/_sandbox/scenario", content=jsonutil.dumps(data))
    assert resp.status_code == 400 and resp.json()["field"] == "products[1].group"
    data["products"][1]["group"] = "AVG"
    data["products"][0]["sku"] = "X" * 31
    resp = httpx.post(sandbox.sage_url + "/_sandbox/scenario", content=jsonutil.dumps(data))
    assert resp.status_code == 400 and resp.json()["field"] == "products[0].sku"
    assert {p["code"] for p in ok(api.get("/products"))} == {"F1", "A1", "S1"}
    assert httpx.get(sandbox.sage_url + "/_sandbox/state").json()["scenario"] == "costing"


# --- what desktop users do ------------------------------------------------------------------------


def test_receipts_and_desktop_goods_in(api: httpx.Client, sandbox: Sandbox) -> None:
    sc = costing_scenario()
    posted, pending = sc.receipts
    f1 = holding(api, "F1")
    opening = next(s.sage_confirmed for s in sc.opening_stock if s.sku == "F1")
    assert f1["confirmed_qty_in_stock"] == opening + posted.quantity  # posted to Sage: already in stock
    moves = ok(api.get("/product_transaction_views", params={"$filter": "transaction_type eq 'Goods In'"}))
    assert [(m["reference"], m["cost_value"]) for m in moves] == [
        ("ASN-0", posted.quantity * posted.unit_cost)
    ]

    a1_before = holding(api, "A1")
    product = ok(api.get("/products", params={"$filter": "code eq 'A1'"}))[0]
    booked = admin(sandbox, "goods_in", {"reference": pending.reference})
    assert booked["quantity"] == pending.quantity
    assert holding(api, "A1")["quantity_in_stock"] == a1_before["quantity_in_stock"] + pending.quantity
    stock = a1_before["quantity_in_stock"]
    expected_avg = (
        (product["average_buying_price"] * stock + pending.unit_cost * pending.quantity)
        / (stock + pending.quantity)
    ).quantize(Decimal("0.00001"), ROUND_HALF_UP)
    assert ok(api.get(f"/products/{product['id']}"))["average_buying_price"] == expected_avg
    again = httpx.post(sandbox.sage_url + "/_sandbox/goods_in", json={"reference": pending.reference})
    assert again.status_code == 400 and again.json()["field"] == "reference"


def test_desktop_status_changes(api: httpx.Client, sandbox: Sandbox) -> None:
    admin(sandbox, "orders/O-A/status", {"status": "OnHold"})
    assert "on hold" in despatch_all(api, "O-A").json()["message"]
    admin(sandbox, "orders/O-A/status", {"status": "Live"})
    ok(despatch_all(api, "O-A"))
    big = get_order(api, "O-BIG")["lines"][0]["allocated_quantity"]
    before = holding(api, "A1")["quantity_allocated_sop"]
    cancelled = admin(sandbox, "orders/O-BIG/status", {"status": "Cancelled"})
    assert cancelled["document_status"] == "EnumDocumentStatusCancelled"
    assert holding(api, "A1")["quantity_allocated_sop"] == before - big
    refused = httpx.post(sandbox.sage_url + "/_sandbox/orders/O-BIG/status", json={"status": "Live"})
    assert refused.status_code == 400 and refused.json()["field"] == "status"


def test_slow_responses_and_confirm_despatch_filters(api: httpx.Client, sandbox: Sandbox) -> None:
    admin(sandbox, "faults", {"slow_seconds": Decimal("0.3")})
    start = time.perf_counter()
    ok(api.get("/warehouses"))
    assert time.perf_counter() - start >= 0.3  # a lower bound: the fault is there, not a speed target
    admin(sandbox, "faults", {"slow_seconds": 0})
    customer = ok(api.get("/customers", params={"$filter": "reference eq 'C1'"}))[0]["id"]
    listed = ok(
        api.get("/sop_confirm_despatch", params={"$filter": f"trader_id eq {customer} and warehouse_id eq 1"})
    )
    live = [
        o
        for o in ok(api.get("/sop_orders", params={"$expand": "lines"}))
        if o["document_status"] == "EnumDocumentStatusLive"
    ]
    assert {a["sop_order_return_id"] for a in listed} == {o["id"] for o in live}
    bad = api.get("/sop_confirm_despatch", params={"$filter": "item_code eq 'F1'"})
    assert bad.status_code == 400 and "item_code" in bad.json()["message"]
