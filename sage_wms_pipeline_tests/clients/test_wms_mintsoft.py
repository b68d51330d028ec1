"""MintsoftClient over real HTTP against the Mintsoft simulator (the `sandbox` fixture).

Setup the WMS interface deliberately does not offer (ASNs, returns, stock moves, clock, faults) goes
through the simulator's own API with plain httpx, as a warehouse user or the sandbox admin would.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sage_wms_pipeline import jsonutil, settings
from sage_wms_pipeline.clients.wms import (
    MINTSOFT_STATUS_MAP,
    DespatchEvent,
    ManifestLine,
    MintsoftClient,
    MovementKind,
    OrderManifest,
    OrderStatus,
    ReceiptStatus,
    ReturnDisposition,
    WmsAuthError,
    WmsOrder,
    WmsRateLimitedError,
    WmsUnavailableError,
    WmsValidationError,
    fold_orders,
)
from sage_wms_pipeline.clients.wms.base import PROGRESS_RANK, SIDE_STATES
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline_tests.conftest import Sandbox

HOUR = 3600


class Warehouse:
    """The simulator driven directly: its admin endpoints and the API calls the client does not wrap."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)
        self.key = self.login()

    def login(self) -> str:
        return str(self.http.post("/api/Auth", json={"Username": "sandbox", "Password": "sandbox"}).json())

    def api(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        def send() -> httpx.Response:
            return self.http.request(
                method,
                "/api" + path,
                params=params,
                headers={"ms-apikey": self.key},
                content=jsonutil.dumps(body) if body is not None else None,
            )

        resp = send()
        if resp.status_code == 401:  # a scenario load forgets issued keys
            self.key = self.login()
            resp = send()
        assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text}"
        return jsonutil.loads(resp.content)

    def advance(self, seconds: int) -> None:
        self.http.post("/_sandbox/clock", json={"advance_seconds": seconds}).raise_for_status()

    def faults(self, **knobs: Any) -> None:
        self.http.post("/_sandbox/faults", content=jsonutil.dumps(knobs)).raise_for_status()


def quiet_scenario(**behaviour: Any) -> Scenario:
    """The demo scenario with every random warehouse behaviour off unless asked for."""
    demo = Scenario.model_validate(jsonutil.loads(settings.demo_scenario_path().read_bytes()))
    rates = {
        "short_pick_rate": 0,
        "split_rate": 0,
        "multi_parcel_rate": 0,
        "cancel_after_print_rate": 0,
        "return_rate": 0,
        "shrink_rate": 0,
        **behaviour,
    }
    return demo.model_copy(
        update={"behaviour": demo.behaviour.model_copy(update={k: Decimal(v) for k, v in rates.items()})}
    )


def manifest(number: str, *lines: tuple[str, int], warehouse: str = "1") -> OrderManifest:
    return OrderManifest(
        order_number=number,
        warehouse_id=warehouse,
        first_name="Ada",
        last_name="Lovelace",
        address_1="1 Analytical Row",
        town="Leeds",
        postcode="LS1 1AA",
        country="GB",
        lines=tuple(
            ManifestLine(sku=sku, quantity=Decimal(q), unit_price=Decimal("9.50")) for sku, q in lines
        ),
    )


@pytest.fixture
def wh(sandbox: Sandbox) -> Iterator[Warehouse]:
    assert sandbox.wms_url, "the Mintsoft simulator is not being served"
    warehouse = Warehouse(sandbox.wms_url)
    yield warehouse
    warehouse.http.close()


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[MintsoftClient]:
    assert sandbox.wms_url
    with MintsoftClient.from_settings(
        sandbox.wms_url, "sandbox", "sandbox", backoff_initial_seconds=0.01, backoff_max_seconds=0.05
    ) as c:
        yield c


def level(client: MintsoftClient, sku: str, warehouse: str) -> Any:
    return next(p for p in client.stock_snapshot().records if (p.sku, p.warehouse_id) == (sku, warehouse))


# ------------------------------------------------------------------------------ auth, transport


def test_wrong_password_is_an_auth_error(sandbox: Sandbox) -> None:
    assert sandbox.wms_url
    with (
        MintsoftClient.from_settings(sandbox.wms_url, "sandbox", "not-it") as c,
        pytest.raises(WmsAuthError, match="credentials refused for user 'sandbox'") as err,
    ):
        c.stock_snapshot()
    assert "not-it" not in str(err.value)


def test_expired_key_is_replaced_once_and_the_call_goes_through(
    client: MintsoftClient, wh: Warehouse
) -> None:
    first = client.stock_snapshot()
    assert client.auth_count == 1
    wh.faults(expire_keys=True)
    assert {p.dedupe_key for p in client.stock_snapshot().records} == {p.dedupe_key for p in first.records}
    assert client.auth_count == 2
    # Expiry by age: keys last 24 warehouse hours.
    wh.advance(23 * HOUR)
    client.orders_changed_since(None)
    assert client.auth_count == 2
    wh.advance(2 * HOUR)
    client.orders_changed_since(None)
    assert client.auth_count == 3


def test_throttling_is_retried_honouring_retry_after_then_given_up(sandbox: Sandbox, wh: Warehouse) -> None:
    assert sandbox.wms_url
    waits: list[float] = []
    with MintsoftClient.from_settings(
        sandbox.wms_url,
        "sandbox",
        "sandbox",
        sleep=waits.append,
        max_attempts=3,  # record, don't sleep
    ) as c:
        c.statuses()  # key and reference data in before the faults
        wh.faults(rate_429=1, retry_after_seconds=2)
        with pytest.raises(WmsRateLimitedError, match="HTTP 429"):
            c.stock_snapshot()
    assert len(waits) == 2 and all(w >= 2 for w in waits), waits


def test_server_errors_are_retried_with_bounded_jittered_backoff(sandbox: Sandbox, wh: Warehouse) -> None:
    assert sandbox.wms_url
    waits: list[float] = []
    opts = {"max_attempts": 4, "backoff_initial_seconds": 1.0, "backoff_max_seconds": 3.0}
    with MintsoftClient.from_settings(sandbox.wms_url, "sandbox", "sandbox", sleep=waits.append, **opts) as c:
        truth = {p.dedupe_key for p in c.stock_snapshot().records}
        wh.faults(rate_5xx=1)
        with pytest.raises(WmsUnavailableError, match=r"HTTP 50[023]"):
            c.stock_snapshot()
        assert len(waits) == 3 and all(0 <= w <= 3.0 for w in waits), waits
        # A flaky service (a third of calls fail) still gives the complete, exact snapshot.
        wh.faults(rate_5xx=Decimal("0.3"), rate_429=Decimal("0.2"), retry_after_seconds=0)
        c.config = c.config.model_copy(update={"max_attempts": 10})
        assert {p.dedupe_key for p in c.stock_snapshot().records} == truth


def test_small_pages_read_everything_until_the_empty_page(sandbox: Sandbox, client: MintsoftClient) -> None:
    assert sandbox.wms_url
    for i in range(5):
        client.create_order(manifest(f"PG{i}", ("MUG-STONE", 1)))
    with MintsoftClient.from_settings(sandbox.wms_url, "sandbox", "sandbox", page_size=2) as small:
        assert small.orders_changed_since(None).records == client.orders_changed_since(None).records
        assert small.stock_snapshot().records != []
        assert {p.dedupe_key for p in small.stock_snapshot().records} == {
            p.dedupe_key for p in client.stock_snapshot().records
        }


# ---------------------------------------------------------------------------------- create


def test_create_is_idempotent_on_the_order_number(client: MintsoftClient, wh: Warehouse) -> None:
    m = manifest("SO0001001", ("TSHIRT-BLK-M", 2), ("MUG-STONE", 1))
    first = client.create_order(m)
    again = client.create_order(m)
    assert first.created and not again.created
    assert again.order_id == first.order_id and first.status is OrderStatus.ALLOCATED
    assert [o["ID"] for o in wh.api("GET", "/Order/Search", OrderNumber="SO0001001")] == [int(first.order_id)]


class LoseFirstCreateResponse(httpx.HTTPTransport):
    """The PUT reaches the WMS and is applied, but its response is lost on the way back."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "PUT" and request.url.path == "/api/Order" and not self.lost:
            self.lost += 1
            response.read()
            raise httpx.ReadTimeout("response lost", request=request)
        return response


def test_a_lost_create_response_is_retried_without_a_second_order(sandbox: Sandbox, wh: Warehouse) -> None:
    assert sandbox.wms_url
    transport = LoseFirstCreateResponse()
    with MintsoftClient.from_settings(
        sandbox.wms_url, "sandbox", "sandbox", transport=transport, backoff_max_seconds=0.01
    ) as c:
        result = c.create_order(manifest("SO0001002", ("THROW-WOOL", 1)))
    assert transport.lost == 1
    assert result.created is False  # the retry met the order its lost first attempt made
    found = wh.api("GET", "/Order/Search", OrderNumber="SO0001002")
    assert [o["ID"] for o in found] == [int(result.order_id)]


def test_external_reference_clash_is_a_conflict_not_a_repeat(client: MintsoftClient) -> None:
    client.create_order(
        manifest("SO0001003", ("MUG-STONE", 1)).model_copy(update={"external_reference": "X1"})
    )
    clash = manifest("SO0001004", ("MUG-STONE", 1)).model_copy(update={"external_reference": "X1"})
    with pytest.raises(WmsValidationError, match=r"SO0001004.*no WMS order has that OrderNumber"):
        client.create_order(clash)
    assert client.find_orders("SO0001004") == []


def test_bad_lines_are_refused_naming_the_item_and_create_nothing(client: MintsoftClient) -> None:
    with pytest.raises(WmsValidationError, match=r"OrderItems\[1\]\.SKU: unknown SKU 'GIFTWRAP'") as err:
        client.create_order(manifest("SO0001005", ("MUG-STONE", 1), ("GIFTWRAP", 1)))
    assert err.value.status_code == 400
    assert client.find_orders("SO0001005") == []
    with pytest.raises(ValueError, match=r"lines\[0\]\.quantity 1.5 is not whole WMS units"):
        client.create_order(
            manifest("SO0001005", ("MUG-STONE", 1)).model_copy(
                update={"lines": (ManifestLine(sku="MUG-STONE", quantity=Decimal("1.5")),)}
            )
        )


def test_cancel_before_despatch_and_refusal_after(client: MintsoftClient, sandbox: Sandbox) -> None:
    sandbox.load(quiet_scenario())
    created = client.create_order(manifest("SO0001006", ("MUG-STONE", 2)))
    free_before = level(client, "MUG-STONE", "1").free
    client.cancel_order(created.order_id)
    client.cancel_order(created.order_id)  # a repeat is a no-op
    assert client.get_order(created.order_id).status is OrderStatus.CANCELLED
    assert level(client, "MUG-STONE", "1").free == free_before + 2  # allocation released
    despatched = client.find_orders("SO0001008")[0]
    with pytest.raises(WmsValidationError, match="HTTP 409") as err:
        client.cancel_order(despatched.order_id)
    assert err.value.status_code == 409


# ---------------------------------------------------------------------- the living warehouse


def test_lifecycle_advances_monotonically_under_a_stepped_clock(
    sandbox: Sandbox, client: MintsoftClient, wh: Warehouse
) -> None:
    sandbox.load(quiet_scenario())
    created = client.create_order(manifest("SO0001001", ("TSHIRT-BLK-M", 2), ("MUG-STONE", 1)))
    cursor, state, seen = None, {}, []
    for _ in range(40):  # ten warehouse hours in 15-minute steps
        batch = client.orders_changed_since(cursor)
        assert batch.quarantined == []
        cursor = batch.next_cursor
        state = fold_orders(batch.records, state)
        mine = state[created.order_id]
        if not seen or seen[-1] != mine.raw_status:
            seen.append(mine.raw_status)
        wh.advance(900)
    final = state[created.order_id]
    assert final.status is OrderStatus.DESPATCHED and final.despatched_at is not None
    assert seen[0] == "NEW" and seen[-1] == "DESPATCHED" and "PRINTED" in seen and "PICKED" in seen
    ranks = [PROGRESS_RANK[MINTSOFT_STATUS_MAP[s]] for s in seen]
    assert ranks == sorted(ranks), seen
    events = [e for e in client.despatches_since(None).records if e.order_id == created.order_id]
    assert len(events) == 1 and events[0].tracking_number
    assert sorted((ln.sku, ln.quantity) for ln in events[0].lines) == [("MUG-STONE", 1), ("TSHIRT-BLK-M", 2)]


def despatched_by_sku(events: list[DespatchEvent]) -> dict[tuple[str, str], Decimal]:
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for e in events:
        for ln in e.lines:
            totals[(e.order_number, ln.sku)] += ln.quantity
    return dict(totals)


def test_split_orders_and_multi_parcel_despatches(
    sandbox: Sandbox, client: MintsoftClient, wh: Warehouse
) -> None:
    sandbox.load(quiet_scenario(split_rate=1, multi_parcel_rate=1))
    client.create_order(manifest("SO0001001", ("TSHIRT-BLK-M", 4), ("MUG-STONE", 3)))
    wh.advance(24 * HOUR)
    parts = client.find_orders("SO0001001")
    assert len(parts) >= 2 and {p.number_of_parts for p in parts} == {len(parts)}
    assert all(p.status is OrderStatus.DESPATCHED for p in parts)
    events = [e for e in client.despatches_since(None).records if e.order_number == "SO0001001"]
    assert len(events) > len(parts)  # several parcels per part
    assert len({e.dedupe_key for e in events}) == len(events)
    assert len({(e.order_id, e.shipment_id) for e in events}) == len(events)
    # Every unit ordered went out exactly once, over all parts and parcels.
    assert despatched_by_sku(events) == {("SO0001001", "TSHIRT-BLK-M"): 4, ("SO0001001", "MUG-STONE"): 3}


def test_short_pick_back_orders_the_missing_units(
    sandbox: Sandbox, client: MintsoftClient, wh: Warehouse
) -> None:
    sandbox.load(quiet_scenario(short_pick_rate=1))
    client.create_order(manifest("SO0001001", ("TSHIRT-BLK-M", 5)))
    cursor, state, seen = None, {}, defaultdict(list)
    for _ in range(24):  # twelve warehouse hours, polled every 30 minutes
        batch = client.orders_changed_since(cursor)
        cursor, state = batch.next_cursor, fold_orders(batch.records, state)
        for o in state.values():
            if o.order_number == "SO0001001" and (not seen[o.part] or seen[o.part][-1] is not o.status):
                seen[o.part].append(o.status)
        wh.advance(HOUR // 2)
    assert len(seen) >= 2, seen
    # The short part waited on back order, then went on once stock was allocated again.
    assert seen[2][0] is OrderStatus.ON_BACKORDER and len(seen[2]) > 1, seen
    # No unit is lost between parts: shipped plus still open is what was ordered.
    shipped = despatched_by_sku(client.despatches_since(None).records).get(("SO0001001", "TSHIRT-BLK-M"), 0)
    still_open = sum(
        (
            ln.quantity
            for o in client.find_orders("SO0001001")
            if o.status is not OrderStatus.DESPATCHED
            for ln in o.lines
        ),
        Decimal(0),
    )
    assert shipped > 0 and shipped + still_open == 5
    moves = client.stock_movements_since(None).records
    assert any(m.raw_action == "CountCorrection" and m.kind is MovementKind.ADJUSTMENT_OUT for m in moves)


def test_back_order_is_released_when_an_asn_is_booked_in(
    sandbox: Sandbox, client: MintsoftClient, wh: Warehouse
) -> None:
    sandbox.load(quiet_scenario())
    have = level(client, "HOODIE-NVY-M", "1")
    created = client.create_order(manifest("SO0001007", ("HOODIE-NVY-M", int(have.free) + 4)))
    cursor = client.orders_changed_since(None).next_cursor
    held = client.get_order(created.order_id)
    assert held.status is OrderStatus.ON_BACKORDER and held.status in SIDE_STATES
    assert held.lines[0].back_ordered == 4 and held.lines[0].allocated == have.free
    receipts_cursor = client.receipts_since(None).next_cursor
    asn = wh.api(
        "PUT",
        "/ASN",
        {
            "WarehouseId": 1,
            "POReference": "PO-77",
            "Supplier": "Knit Co",
            "Items": [{"SKU": "HOODIE-NVY-M", "Quantity": 10}],
        },
    )
    wh.api("POST", f"/ASN/{asn['ID']}/BookIn")
    wh.advance(HOUR + 60)
    batch = client.orders_changed_since(cursor)
    state = fold_orders(batch.records, {created.order_id: held})
    assert state[created.order_id].status is OrderStatus.ALLOCATED  # newer: leaves the side state
    (line,) = [r for r in client.receipts_since(receipts_cursor).records if r.asn_id == str(asn["ID"])]
    assert (line.status, line.quantity_booked, line.sku, line.warehouse_id) == (
        ReceiptStatus.BOOKED_IN,
        10,
        "HOODIE-NVY-M",
        "1",
    )


def test_asn_partial_then_full_book_in_reads_incrementally(client: MintsoftClient, wh: Warehouse) -> None:
    start = level(client, "MUG-STONE", "2")
    asn = wh.api(
        "PUT",
        "/ASN",
        {
            "WarehouseId": 2,
            "POReference": "PO-88",
            "Supplier": "Stoneware Ltd",
            "Items": [{"SKU": "MUG-STONE", "Quantity": 24}],
        },
    )
    wh.api("GET", f"/ASN/{asn['ID']}/Confirm")
    first = client.receipts_since(None)
    (expected,) = [r for r in first.records if r.asn_id == str(asn["ID"])]
    assert expected.status is ReceiptStatus.EXPECTED and expected.quantity_booked == 0
    assert level(client, "MUG-STONE", "2").inbound == start.inbound + 24
    wh.advance(60)
    wh.api("POST", f"/ASN/{asn['ID']}/BookInPartial", [{"SKU": "MUG-STONE", "Quantity": 10}])
    second = client.receipts_since(first.next_cursor)
    partial = [r for r in second.records if r.asn_id == str(asn["ID"])]
    assert [(r.status, r.quantity_booked) for r in partial] == [(ReceiptStatus.PARTIALLY_BOOKED_IN, 10)]
    wh.advance(60)
    wh.api("POST", f"/ASN/{asn['ID']}/BookIn")
    third = client.receipts_since(second.next_cursor)
    assert [(r.status, r.quantity_booked) for r in third.records if r.asn_id == str(asn["ID"])] == [
        (ReceiptStatus.BOOKED_IN, 24)
    ]
    assert level(client, "MUG-STONE", "2").physical == start.physical + 24
    assert third.next_cursor and third.next_cursor > first.next_cursor  # type: ignore[operator]
    receipts = [m for m in client.stock_movements_since(None).records if m.asn_id == str(asn["ID"])]
    assert [m.quantity for m in receipts] == [10, 14] and {m.kind for m in receipts} == {MovementKind.RECEIPT}


def test_returns_are_graded_and_quarantine_stays_out_of_the_level(
    client: MintsoftClient, wh: Warehouse
) -> None:
    (order,) = client.find_orders("SO0001008")  # despatched at load: 10 TSHIRT-BLK-M (Leeds), 6 MUG-STONE
    tshirt, mug = level(client, "TSHIRT-BLK-M", "1"), level(client, "MUG-STONE", "2")
    ret = wh.api("POST", f"/Return/CreateReturn/{order.order_id}")
    wh.api(
        "POST", f"/Return/{ret['ID']}/AddItem", {"SKU": "TSHIRT-BLK-M", "Quantity": 2, "Action": "Restock"}
    )
    wh.api(
        "POST", f"/Return/{ret['ID']}/AddItem", {"SKU": "MUG-STONE", "Quantity": 3, "Action": "Quarantine"}
    )
    wh.api("POST", f"/Return/{ret['ID']}/AddItem", {"SKU": "MUG-STONE", "Quantity": 1, "Action": "Scrap"})
    pending = client.returns_since(None)
    assert {(r.sku, r.disposition) for r in pending.records} == {
        ("TSHIRT-BLK-M", ReturnDisposition.PENDING),
        ("MUG-STONE", ReturnDisposition.PENDING),
    }
    wh.advance(60)
    wh.api("POST", f"/Return/{ret['ID']}/Confirm")
    graded = client.returns_since(pending.next_cursor)
    assert sorted((r.sku, r.quantity, r.disposition, r.warehouse_id) for r in graded.records) == [
        ("MUG-STONE", 1, ReturnDisposition.SCRAP, "2"),
        ("MUG-STONE", 3, ReturnDisposition.QUARANTINE, "2"),
        ("TSHIRT-BLK-M", 2, ReturnDisposition.RESTOCK, "1"),
    ]
    assert all(r.order_number == "SO0001008" and r.confirmed for r in graded.records)
    assert not {r.dedupe_key for r in graded.records} & {r.dedupe_key for r in pending.records}
    after_tshirt, after_mug = level(client, "TSHIRT-BLK-M", "1"), level(client, "MUG-STONE", "2")
    assert after_tshirt.physical == tshirt.physical + 2
    assert (after_mug.physical, after_mug.quarantine) == (mug.physical, mug.quarantine + 3)


def test_quarantine_move_is_excluded_from_the_level(client: MintsoftClient, wh: Warehouse) -> None:
    before = level(client, "THROW-WOOL", "1")
    cursor = client.stock_movements_since(None).next_cursor
    wh.api(
        "POST",
        "/Warehouse/StockMovement",
        {"SKU": "THROW-WOOL", "WarehouseId": 1, "Quantity": 3, "Action": 7, "Comment": "moth damage"},
    )
    after = level(client, "THROW-WOOL", "1")
    assert (after.physical, after.free, after.quarantine) == (
        before.physical - 3,
        before.free - 3,
        before.quarantine + 3,
    )
    (move,) = client.stock_movements_since(cursor).records
    assert (move.kind, move.quantity, move.quarantine_quantity, move.raw_action) == (
        MovementKind.QUARANTINE,
        -3,
        3,
        "Quarantine",
    )


# --------------------------------------------------------------------------- delivery faults


class CountingTransport(httpx.HTTPTransport):
    """Counts rows per Order/List response, to prove the simulator really repeated records."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/api/Order/List" and response.status_code == 200:
            rows = jsonutil.loads(response.read())
            seen = Counter((r.get("ID"), r.get("LastUpdated"), r.get("OrderStatus")) for r in rows)
            self.repeats += sum(n - 1 for n in seen.values())
        return response


def test_duplicate_out_of_order_and_late_deliveries_converge_on_the_truth(
    sandbox: Sandbox, client: MintsoftClient, wh: Warehouse
) -> None:
    sandbox.load(quiet_scenario(split_rate=Decimal("0.5"), multi_parcel_rate=Decimal("0.5")))
    numbers = [f"SO00010{i:02d}" for i in range(11, 19)]
    for n in numbers:
        client.create_order(manifest(n, ("TSHIRT-BLK-M", 2), ("MUG-STONE", 1)))
    wh.faults(
        duplicate_rate=Decimal("0.4"),
        out_of_order_rate=Decimal("0.4"),
        late_rate=Decimal("0.5"),
        late_seconds=HOUR,
    )
    counter = CountingTransport()
    assert sandbox.wms_url
    polled = MintsoftClient.from_settings(sandbox.wms_url, "sandbox", "sandbox", transport=counter)
    state: dict[str, WmsOrder] = {}
    history: list[WmsOrder] = []
    events: dict[str, DespatchEvent] = {}
    deliveries = 0
    order_cursor = despatch_cursor = None
    with polled:
        for _ in range(40):  # ten warehouse hours, polled every 15 minutes
            batch = polled.orders_changed_since(order_cursor)
            assert len({o.order_id for o in batch.records}) == len(batch.records)  # one state per order
            order_cursor, state = batch.next_cursor, fold_orders(batch.records, state)
            history.extend(batch.records)
            despatches = polled.despatches_since(despatch_cursor)
            assert len({e.dedupe_key for e in despatches.records}) == len(despatches.records)
            despatch_cursor = despatches.next_cursor
            deliveries += len(despatches.records)
            events.update((e.dedupe_key, e) for e in despatches.records)  # the caller's idempotent store
            wh.advance(900)
    assert counter.repeats > 0, "the fault knobs produced no repeats: the test proves nothing"
    assert deliveries > len(events)  # the lookback re-delivered; keys recognised every repeat
    wh.faults(duplicate_rate=0, out_of_order_rate=0, late_rate=0)
    truth = {o.order_id: o for o in client.orders_changed_since(None).records}
    assert state == truth
    assert all(truth[o].status is OrderStatus.DESPATCHED for o in truth if truth[o].order_number in numbers)
    # Every state ever delivered, replayed backwards or shuffled, still folds to the truth.
    assert fold_orders(reversed(history)) == truth
    shuffled = history[:]
    random.Random(7).shuffle(shuffled)
    assert fold_orders(shuffled) == truth
    assert set(events) == {e.dedupe_key for e in client.despatches_since(None).records}


REASON = re.compile(r"negative quantity|unknown SKU|unknown order")


def test_malformed_records_come_back_quarantined_with_the_reason(
    sandbox: Sandbox, client: MintsoftClient, wh: Warehouse
) -> None:
    sandbox.load(quiet_scenario())
    for i in range(6):
        client.create_order(manifest(f"SO00010{20 + i}", ("TSHIRT-BLK-M", 1), ("MUG-STONE", 1)))
    wh.advance(8 * HOUR)
    clean_orders = client.orders_changed_since(None)
    clean_moves = client.stock_movements_since(None)
    wh.faults(malformed_rate=Decimal("0.5"))
    orders = client.orders_changed_since(None)
    moves = client.stock_movements_since(None)
    for batch in (orders, moves):
        assert batch.quarantined, "no junk was injected: raise malformed_rate"
        for q in batch.quarantined:
            assert REASON.search(q.reason), q.reason
            assert q.payload and q.source.startswith("GET /api/")
    found = (REASON.search(q.reason) for q in [*orders.quarantined, *moves.quarantined])
    assert {m.group(0) for m in found if m} == {"negative quantity", "unknown SKU", "unknown order"}
    named = r"(OrderItems\[0\]\.Quantity|OrderItems\[0\]\.SKU|ID|OrderId|Quantity|SKU): "
    assert all(re.search(named, q.reason) for q in [*orders.quarantined, *moves.quarantined])
    # The good records are exactly the fault-free ones, and junk never moves a cursor.
    assert orders.records == clean_orders.records and orders.next_cursor == clean_orders.next_cursor
    assert moves.records == clean_moves.records and moves.next_cursor == clean_moves.next_cursor
