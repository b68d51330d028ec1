"""The Mintsoft simulator over real HTTP: auth, orders, the living warehouse, stock, goods in, returns."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import Receipt, Scenario, WmsOrderState
from sage_wms_pipeline.settings import demo_scenario_path
from sage_wms_pipeline_tests.conftest import Sandbox, start_sandbox

HOUR = 3600


def demo() -> Scenario:
    return Scenario.model_validate(jsonutil.loads(demo_scenario_path().read_text(encoding="utf-8")))


def calm(**behaviour: Any) -> Scenario:
    """The demo scenario with every random warehouse behaviour off, except those given."""
    sc = demo()
    zero = Decimal(0)
    sc.behaviour = sc.behaviour.model_copy(
        update={
            "short_pick_rate": zero,
            "split_rate": zero,
            "multi_parcel_rate": zero,
            "cancel_after_print_rate": zero,
            "return_rate": zero,
            "shrink_rate": zero,
            **{k: Decimal(str(v)) for k, v in behaviour.items()},
        }
    )
    return sc


class Wms:
    """A thin Mintsoft caller: PascalCase JSON through the exact codec, key in `ms-apikey`."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=30)
        self.key: str | None = None

    def login(self) -> Wms:
        self.key = self.call(
            "POST", "/api/Auth", {"Username": "sandbox", "Password": "sandbox"}, auth=False
        ).json()
        return self

    def call(
        self, method: str, path: str, body: Any = None, auth: bool = True, **params: Any
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if auth and self.key:
            headers["ms-apikey"] = self.key
        return self.http.request(
            method,
            path,
            content=None if body is None else jsonutil.dumps(body),
            headers=headers,
            params=params or None,
        )

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
        return jsonutil.loads(resp.content)

    def refused(self, status: int, method: str, path: str, body: Any = None, **params: Any) -> str:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == status, f"{method} {path}: {resp.status_code} {resp.text}"
        return jsonutil.loads(resp.content)["Message"]

    def admin(self, path: str, body: Any = None) -> Any:
        return self.ok("POST", f"/_sandbox/{path}", body)

    def advance(self, hours: float, relogin: bool = True) -> None:
        """Step the warehouse clock; a fresh key after, as a real client re-authenticates on 401."""
        self.admin("clock", {"advance_seconds": int(hours * HOUR)})
        if relogin:
            self.login()

    def order(self, oid: int) -> dict[str, Any]:
        return self.ok("GET", f"/api/Order/{oid}")

    def parts(self, number: str) -> list[dict[str, Any]]:
        return self.ok("GET", "/api/Order/Search", OrderNumber=number)

    def level(self, sku: str, warehouse: int) -> dict[str, Any]:
        rows = self.ok("GET", "/api/Product/StockLevels", SKU=sku, WarehouseId=warehouse)
        assert len(rows) == 1
        return rows[0]

    def create(
        self, number: str, lines: list[tuple[str, int]], warehouse: int = 1, **extra: Any
    ) -> dict[str, Any]:
        return self.ok("PUT", "/api/Order", order_body(number, lines, warehouse, **extra))

    def flows(self, **params: Any) -> list[dict[str, Any]]:
        return self.ok("GET", "/api/Product/StockFlow", **params)


def order_body(number: str, lines: list[tuple[str, Any]], warehouse: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "OrderNumber": number,
        "ExternalOrderReference": f"EXT-{number}",
        "WarehouseId": warehouse,
        "CourierService": "Royal Mail 48",
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Address1": "1 High St",
        "Town": "York",
        "PostCode": "YO1 7HH",
        "Country": "GB",
        "OrderItems": [{"SKU": sku, "Quantity": qty, "UnitPrice": Decimal("9.99")} for sku, qty in lines],
        **extra,
    }


@pytest.fixture
def wms(sandbox: Sandbox) -> Wms:
    assert sandbox.wms_url, "the Mintsoft simulator is not being served"
    return Wms(sandbox.wms_url).login()


# ---- auth ------------------------------------------------------------------------------------------


def test_auth_key_required_and_expires_in_warehouse_time(wms: Wms) -> None:
    assert (
        wms.call("POST", "/api/Auth", {"Username": "sandbox", "Password": "nope"}, auth=False).status_code
        == 401
    )
    anon = Wms(wms.base)
    assert "ms-apikey" in anon.refused(401, "GET", "/api/Order/Statuses")
    anon.key = "not-a-key"
    assert anon.refused(401, "GET", "/api/Order/Statuses") == "Invalid API key"

    assert {s["Name"] for s in wms.ok("GET", "/api/Order/Statuses")} >= {
        "NEW",
        "PRINTED",
        "AWAITINGPICKING",
        "PICKINGSTARTED",
        "PICKED",
        "PACKANDHOLD",
        "DESPATCHED",
        "CANCELLED",
        "HOLDING",
        "ONBACKORDER",
    }
    wms.advance(23.9, relogin=False)
    wms.ok("GET", "/api/Order/Statuses")
    wms.advance(0.2, relogin=False)
    assert "expired" in wms.refused(401, "GET", "/api/Order/Statuses")
    wms.login()
    wms.ok("GET", "/api/Order/Statuses")
    wms.admin("faults", {"expire_keys": True})
    assert "expired" in wms.refused(401, "GET", "/api/Order/Statuses")


# ---- orders ----------------------------------------------------------------------------------------


def test_repeated_create_is_refused_and_creates_nothing(wms: Wms) -> None:
    first = wms.create("SO0001001", [("TSHIRT-BLK-M", 2), ("MUG-STONE", 1)])
    assert first["Success"] and first["OrderStatus"] == "NEW"
    again = wms.call("PUT", "/api/Order", order_body("SO0001001", [("TSHIRT-BLK-M", 2)]))
    assert again.status_code == 409
    body = jsonutil.loads(again.content)
    assert (
        body["Success"] is False
        and body["OrderId"] == first["OrderId"]
        and "already exists" in body["Message"]
    )
    # Same external reference under another number is the same order too.
    clash = wms.call(
        "PUT",
        "/api/Order",
        {**order_body("SO-OTHER", [("MUG-STONE", 1)]), "ExternalOrderReference": "EXT-SO0001001"},
    )
    assert clash.status_code == 409 and "ExternalOrderReference" in jsonutil.loads(clash.content)["Message"]
    assert [o["ID"] for o in wms.parts("SO0001001")] == [first["OrderId"]]
    assert wms.parts("SO-OTHER") == []
    # Only the first create allocated stock.
    assert wms.level("TSHIRT-BLK-M", 1)["Allocated"] == 2


def test_scenario_orders_in_wms_are_preloaded(wms: Wms) -> None:
    (so8,) = wms.parts("SO0001008")  # in_wms DESPATCHED in the demo
    assert so8["OrderStatus"] == "DESPATCHED" and so8["TrackingNumber"]
    assert {(i["SKU"], i["WarehouseId"], i["QuantityDespatched"]) for i in so8["OrderItems"]} == {
        ("TSHIRT-BLK-M", 1, 10),
        ("MUG-STONE", 2, 6),
    }
    assert wms.parts("SO0001001") == []  # not sent by the pipeline yet
    # Opening 144 less the 10 despatched; CARD-XMAS-6 held in eaches; CANDLE-FIG under its WMS SKU.
    assert wms.level("TSHIRT-BLK-M", 1)["TotalStockLevel"] == 134
    assert wms.level("CARD-XMAS-6", 1)["TotalStockLevel"] == 324
    assert wms.level("CNDL-FIG-200", 2)["TotalStockLevel"] == 45
    assert "unknown SKU" in wms.refused(400, "PUT", "/api/Order", order_body("SO-X", [("GIFTWRAP", 1)]))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"OrderItems": [{"SKU": "MUG-STONE", "Quantity": 1}, {"SKU": "NOPE", "Quantity": 1}]},
            "OrderItems[1].SKU: unknown SKU 'NOPE'",
        ),
        ({"OrderItems": [{"SKU": "MUG-STONE", "Quantity": 0}]}, "OrderItems[0].Quantity"),
        ({"OrderItems": [{"SKU": "MUG-STONE", "Quantity": Decimal("1.5")}]}, "OrderItems[0].Quantity"),
        (
            {"OrderItems": [{"SKU": "MUG-STONE", "Quantity": 1, "WarehouseId": 99}]},
            "OrderItems[0].WarehouseId",
        ),
        ({"WarehouseId": 42}, "WarehouseId: unknown warehouse 42"),
        ({"Country": None}, "Country"),
        ({"OrderItems": []}, "OrderItems"),
        ({"CourierService": None}, "CourierService"),
    ],
)
def test_bad_order_names_the_field_and_changes_nothing(
    wms: Wms, change: dict[str, Any], expected: str
) -> None:
    before = wms.level("MUG-STONE", 1)
    message = wms.refused(400, "PUT", "/api/Order", {**order_body("SO-BAD", [("MUG-STONE", 1)]), **change})
    assert expected in message
    assert wms.parts("SO-BAD") == []
    assert wms.level("MUG-STONE", 1) == before


def test_lifecycle_advances_under_a_stepped_clock(wms: Wms) -> None:
    wms.admin("scenario", calm().model_dump(mode="python"))
    wms.login()
    opening = wms.level("HOODIE-NVY-M", 1)["TotalStockLevel"]
    oid = wms.create("SO-LIFE", [("HOODIE-NVY-M", 3)])["OrderId"]
    seen, stamps = [], []
    for _ in range(30):  # 10 warehouse hours in 20-minute steps
        o = wms.order(oid)
        if not seen or seen[-1] != o["OrderStatus"]:
            seen.append(o["OrderStatus"])
            stamps.append(o["LastUpdated"])
            changed = wms.ok("GET", "/api/Order/List", SinceLastUpdated=o["LastUpdated"])
            assert oid in [c["ID"] for c in changed]
        wms.advance(1 / 3)
    assert seen == ["NEW", "PRINTED", "AWAITINGPICKING", "PICKINGSTARTED", "PICKED", "DESPATCHED"]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    done = wms.order(oid)
    assert done["DespatchDate"] == done["LastUpdated"] and done["TrackingNumber"]
    assert (
        done["CourierServiceName"] == "Royal Mail 48"
        and done["NumberOfParcels"] == len(done["Shipments"]) == 1
    )
    assert done["OrderItems"][0]["QuantityDespatched"] == 3
    row = wms.level("HOODIE-NVY-M", 1)
    assert (row["TotalStockLevel"], row["Allocated"]) == (opening - 3, 0)
    despatch_flows = [f for f in wms.flows() if f["OrderId"] == oid]
    assert [(f["Flow"], f["LevelChange"]) for f in despatch_flows] == [("Despatch", -3)]
    assert wms.ok("GET", "/api/Order/List", SinceDespatchDate=done["DespatchDate"])[0]["ID"] == oid


def test_cancel_releases_allocation_and_despatched_orders_cannot_be_cancelled(wms: Wms) -> None:
    wms.admin("scenario", calm().model_dump(mode="python"))
    wms.login()
    oid = wms.create("SO-CAN", [("MUG-STONE", 4)])["OrderId"]
    assert wms.level("MUG-STONE", 1)["Allocated"] == 4
    assert wms.ok("GET", f"/api/Order/{oid}/Cancel")["Success"]
    assert wms.order(oid)["OrderStatus"] == "CANCELLED"
    assert wms.level("MUG-STONE", 1)["Allocated"] == 0
    repeat = wms.ok("GET", f"/api/Order/{oid}/Cancel")
    assert repeat["Success"] and repeat["WarningMessage"] == "already cancelled"
    (so8,) = wms.parts("SO0001008")
    assert "cannot be cancelled" in wms.refused(409, "POST", f"/api/Order/{so8['ID']}/Cancel")


def test_some_orders_are_cancelled_after_printing(wms: Wms) -> None:
    wms.admin("scenario", calm(cancel_after_print_rate=1).model_dump(mode="python"))
    wms.login()
    oid = wms.create("SO-GONE", [("CNDL-FIG-200", 3)], warehouse=2)["OrderId"]
    wms.advance(0.7)
    assert wms.order(oid)["OrderStatus"] == "PRINTED"
    assert wms.level("CNDL-FIG-200", 2)["Allocated"] == 3
    wms.advance(1)
    assert wms.order(oid)["OrderStatus"] == "CANCELLED"
    assert wms.level("CNDL-FIG-200", 2)["Allocated"] == 0
    assert [o["ID"] for o in wms.ok("GET", "/api/Order/List", OrderStatusId=5, WarehouseId=2)] == [oid]
    assert wms.ok("GET", "/api/Order/List", OrderStatusId=5, WarehouseId=1) == []


def test_split_orders_despatch_in_parts_and_parcels(wms: Wms) -> None:
    wms.admin("scenario", calm(split_rate=1, multi_parcel_rate=1).model_dump(mode="python"))
    wms.login()
    wms.create("SO-SPLIT", [("TSHIRT-BLK-M", 4), ("MUG-STONE", 2), ("GIFTBOX-S", 3)])
    wms.advance(1)
    parts = wms.parts("SO-SPLIT")
    assert [p["Part"] for p in parts] == [1, 2]
    assert {p["NumberOfParts"] for p in parts} == {2}
    assert {p["ExternalOrderReference"] for p in parts} == {"EXT-SO-SPLIT"}
    wms.advance(24)
    parts = wms.parts("SO-SPLIT")
    assert {p["OrderStatus"] for p in parts} == {"DESPATCHED"}
    despatched: dict[str, int] = {}
    for p in parts:
        assert p["NumberOfParcels"] == len(p["Shipments"]) >= 2
        assert len({s["TrackingNumber"] for s in p["Shipments"]}) == len(p["Shipments"])
        in_parcels: dict[str, int] = {}
        for s in p["Shipments"]:
            for it in s["Items"]:
                in_parcels[it["SKU"]] = in_parcels.get(it["SKU"], 0) + it["Quantity"]
        assert in_parcels == {i["SKU"]: i["QuantityDespatched"] for i in p["OrderItems"]}
        for sku, qty in in_parcels.items():
            despatched[sku] = despatched.get(sku, 0) + qty
    assert despatched == {"TSHIRT-BLK-M": 4, "MUG-STONE": 2, "GIFTBOX-S": 3}
    assert parts[0]["DespatchDate"] != parts[1]["DespatchDate"]  # part 2 goes a picking wave later


def test_short_stock_goes_on_back_order_until_goods_arrive(wms: Wms) -> None:
    wms.admin("scenario", calm().model_dump(mode="python"))
    wms.login()
    oid = wms.create("SO-BO", [("THROW-WOOL", 6)], warehouse=3)["OrderId"]  # 4 in stock at the 3PL
    o = wms.order(oid)
    assert o["OrderStatus"] == "ONBACKORDER"
    assert (o["OrderItems"][0]["Allocated"], o["OrderItems"][0]["OnBackOrder"]) == (4, 2)
    wms.advance(5)
    assert wms.order(oid)["OrderStatus"] == "ONBACKORDER"
    asn = wms.ok(
        "PUT",
        "/api/ASN",
        {"WarehouseId": 3, "POReference": "PO-1", "Items": [{"SKU": "THROW-WOOL", "Quantity": 5}]},
    )
    wms.ok("POST", f"/api/ASN/{asn['ID']}/BookIn")
    wms.advance(1)
    assert wms.order(oid)["OrderStatus"] in {"NEW", "PRINTED"}
    wms.advance(12)
    assert wms.order(oid)["OrderStatus"] == "DESPATCHED"
    assert wms.level("THROW-WOOL", 3)["TotalStockLevel"] == 4 + 5 - 6


def test_short_pick_writes_off_and_back_orders_the_missing_units(wms: Wms) -> None:
    wms.admin("scenario", calm(short_pick_rate=1).model_dump(mode="python"))
    wms.login()
    wms.create("SO-SHORT", [("TSHIRT-WHT-L", 5), ("MUG-STONE", 5)])
    opening = {s: wms.level(s, 1)["TotalStockLevel"] for s in ("TSHIRT-WHT-L", "MUG-STONE")}
    wms.advance(8)
    parts = wms.parts("SO-SHORT")
    assert len(parts) >= 2 and {p["NumberOfParts"] for p in parts} == {len(parts)}
    ordered: dict[str, int] = {}
    for p in parts:
        for it in p["OrderItems"]:
            ordered[it["SKU"]] = ordered.get(it["SKU"], 0) + it["Quantity"]
    assert ordered == {"TSHIRT-WHT-L": 5, "MUG-STONE": 5}  # nothing lost between the parts
    ids = {p["ID"] for p in parts}
    written_off = [f for f in wms.flows() if f["OrderId"] in ids and f["Flow"] == "CountCorrection"]
    assert written_off and all(f["LevelChange"] < 0 for f in written_off)
    despatched = sum(f["Quantity"] for f in wms.flows() if f["OrderId"] in ids and f["Flow"] == "Despatch")
    level_now = sum(wms.level(s, 1)["TotalStockLevel"] for s in opening)
    assert level_now == sum(opening.values()) - despatched - sum(f["Quantity"] for f in written_off)


# ---- stock -----------------------------------------------------------------------------------------


def test_quarantine_is_excluded_from_the_level(wms: Wms) -> None:
    before = wms.level("GIFTBOX-S", 2)
    move = {"SKU": "GIFTBOX-S", "WarehouseId": 2, "Quantity": 7, "Comment": "crushed boxes", "Action": 7}
    wms.ok("POST", "/api/Warehouse/StockMovement", move)
    row = wms.level("GIFTBOX-S", 2)
    assert row["TotalStockLevel"] == before["TotalStockLevel"] - 7
    assert row["Level"] == row["Available"] == before["Level"] - 7
    assert row["InQuarantine"] == 7
    assert {b["Type"]: b["Quantity"] for b in row["Breakdown"]} == {
        "Sellable": row["TotalStockLevel"],
        "Quarantine": 7,
    }
    wms.ok("POST", "/api/Warehouse/StockMovement", {**move, "Quantity": 2, "Action": "UnQuarantine"})
    wms.ok("POST", "/api/Warehouse/StockMovement", {**move, "Quantity": 5, "Action": 19})  # Scrap_OffHand
    row = wms.level("GIFTBOX-S", 2)
    assert (row["TotalStockLevel"], row["InQuarantine"]) == (before["TotalStockLevel"] - 5, 0)
    ledger = [(f["Flow"], f["LevelChange"], f["QuarantineChange"]) for f in wms.flows(WarehouseId=2)]
    assert ledger[-3:] == [("Quarantine", -7, 7), ("UnQuarantine", 2, -2), ("Scrap_OffHand", 0, -5)]
    summed = wms.ok("GET", "/api/Product/StockLevels", SKU="GIFTBOX-S", WarehouseId=0)
    assert summed[0]["WarehouseId"] == 0 and summed[0]["TotalStockLevel"] == 300 + 150 + 50 - 5


def test_bad_stock_movement_names_the_field_and_changes_nothing(wms: Wms) -> None:
    before = wms.level("THROW-WOOL", 1)
    base = {"SKU": "THROW-WOOL", "WarehouseId": 1, "Quantity": 1, "Action": 1}
    assert "Quantity" in wms.refused(400, "POST", "/api/Warehouse/StockMovement", {**base, "Quantity": 1000})
    assert "Action" in wms.refused(400, "POST", "/api/Warehouse/StockMovement", {**base, "Action": 4})
    assert "SKU" in wms.refused(400, "POST", "/api/Warehouse/StockMovement", {**base, "SKU": "NOPE"})
    assert "WarehouseId" in wms.refused(
        400, "POST", "/api/Warehouse/StockMovement", {**base, "WarehouseId": 9}
    )
    # A batch is all or nothing: the good first line is not kept.
    batch = [base, {**base, "Quantity": -3}]
    assert "[1]Quantity" in wms.refused(400, "POST", "/api/Warehouse/StockMovement", batch)
    assert wms.level("THROW-WOOL", 1) == before
    assert "Limit" in wms.refused(400, "GET", "/api/Product/StockFlow", Limit=500)


def test_bulk_on_hand_update_sets_the_level_through_count_corrections(wms: Wms) -> None:
    wms.create("SO-HELD", [("THROW-WOOL", 20)])  # 20 of the 24 at Leeds allocated
    rows = [
        {"SKU": "THROW-WOOL", "WarehouseId": 1, "Quantity": 22},
        {"SKU": "THROW-WOOL", "WarehouseId": 2, "Quantity": 15},
    ]
    wms.ok("POST", "/api/Product/BulkOnHandStockUpdate", rows)
    assert [wms.level("THROW-WOOL", w)["TotalStockLevel"] for w in (1, 2)] == [22, 15]
    ledger = [(f["WarehouseId"], f["Flow"], f["LevelChange"]) for f in wms.flows()][-2:]
    assert ledger == [(1, "CountCorrection", -2), (2, "CountCorrection", 3)]
    # Below what is allocated is refused, and the batch keeps nothing.
    too_low = [
        {"SKU": "THROW-WOOL", "WarehouseId": 2, "Quantity": 1},
        {"SKU": "THROW-WOOL", "WarehouseId": 1, "Quantity": 19},
    ]
    assert "[1].Quantity" in wms.refused(400, "POST", "/api/Product/BulkOnHandStockUpdate", too_low)
    assert [wms.level("THROW-WOOL", w)["TotalStockLevel"] for w in (1, 2)] == [22, 15]


def test_stock_flow_reads_incrementally(wms: Wms) -> None:
    for qty in (1, 2, 3):
        wms.ok(
            "POST",
            "/api/Warehouse/StockMovement",
            {"SKU": "MUG-STONE", "WarehouseId": 3, "Quantity": qty, "Action": "StockIn"},
        )
    everything = wms.flows()
    ids = [f["ID"] for f in everything]
    assert ids == sorted(ids)
    pages = [wms.flows(Limit=2, PageNo=n) for n in (1, 2, 3, 4)]
    assert [f["ID"] for page in pages for f in page] == ids and pages[-1] == []
    tail = wms.flows(SinceId=ids[-2])
    assert [f["ID"] for f in tail] == ids[-1:]
    mug = wms.ok("GET", f"/api/Product/{everything[-1]['ProductId']}/StockFlow", WarehouseId=3)
    assert [f["Quantity"] for f in mug] == [1, 2, 3]
    changed = wms.ok("GET", "/api/Product/StockLevels/UpdatedSince", FromDate=everything[-1]["Date"])
    assert ("MUG-STONE", 3) in {(r["SKU"], r["WarehouseId"]) for r in changed}


# ---- goods in and returns --------------------------------------------------------------------------


def test_asn_partial_then_full_book_in(wms: Wms) -> None:
    body = {
        "WarehouseId": 1,
        "POReference": "PO-77",
        "Supplier": "Mill Ltd",
        "Items": [{"SKU": "HOODIE-NVY-M", "Quantity": 10, "SourceLineId": "L1"}],
    }
    aid = wms.ok("PUT", "/api/ASN", body)["ID"]
    start = wms.level("HOODIE-NVY-M", 1)
    assert start["OnOrder"] == 10
    wms.ok("POST", f"/api/ASN/{aid}/BookInPartial", [{"SKU": "HOODIE-NVY-M", "Quantity": 4}])
    asn = wms.ok("GET", f"/api/ASN/{aid}")
    assert asn["Status"] == "PartiallyBookedIn" and asn["Items"][0]["QuantityBooked"] == 4
    row = wms.level("HOODIE-NVY-M", 1)
    assert (row["TotalStockLevel"], row["OnOrder"]) == (start["TotalStockLevel"] + 4, 6)
    assert "exceed" in wms.refused(
        400, "POST", f"/api/ASN/{aid}/BookInPartial", [{"SKU": "HOODIE-NVY-M", "Quantity": 7}]
    )
    wms.ok("POST", f"/api/ASN/{aid}/BookIn")
    asn = wms.ok("GET", f"/api/ASN/{aid}")
    assert asn["Status"] == "BookedIn" and asn["Items"][0]["Complete"]
    row = wms.level("HOODIE-NVY-M", 1)
    assert (row["TotalStockLevel"], row["OnOrder"]) == (start["TotalStockLevel"] + 10, 0)
    booked = [f for f in wms.flows() if f["ASNId"] == aid]
    assert [(f["Flow"], f["LevelChange"]) for f in booked] == [("ASNStockIN", 4), ("ASNStockIN", 6)]
    listed = wms.ok("GET", "/api/ASN/List", FromDate=asn["CreatedDate"])
    assert aid in [a["ID"] for a in listed]
    assert "Items[0].SKU" in wms.refused(
        400, "PUT", "/api/ASN", {**body, "Items": [{"SKU": "X", "Quantity": 1}]}
    )


def test_asn_receive_then_book_in_books_what_was_counted(wms: Wms) -> None:
    body = {"WarehouseId": 2, "POReference": "PO-88", "Items": [{"SKU": "THROW-WOOL", "Quantity": 5}]}
    aid = wms.ok("PUT", "/api/ASN", body)["ID"]
    wms.ok("GET", f"/api/ASN/{aid}/Confirm")
    assert wms.ok("GET", f"/api/ASN/{aid}")["Status"] == "AwaitingDelivery"
    wms.ok("POST", f"/api/ASN/{aid}/Items/Receive", [{"SKU": "THROW-WOOL", "Quantity": 3}])
    asn = wms.ok("GET", f"/api/ASN/{aid}")
    assert asn["Status"] == "AwaitingPutAway" and asn["Items"][0]["QuantityReceieved"] == 3
    assert wms.level("THROW-WOOL", 2)["TotalStockLevel"] == 12  # counted, not yet booked in
    wms.ok("POST", f"/api/ASN/{aid}/BookIn")
    asn = wms.ok("GET", f"/api/ASN/{aid}")
    assert asn["Status"] == "BookedIn" and asn["Items"][0]["QuantityBooked"] == 3
    row = wms.level("THROW-WOOL", 2)
    assert (row["TotalStockLevel"], row["OnOrder"]) == (15, 0)
    assert "already booked in" in wms.refused(409, "POST", f"/api/ASN/{aid}/BookIn")


def test_asn_with_estimated_delivery_is_booked_in_by_the_warehouse(wms: Wms) -> None:
    now = wms.ok("GET", "/_sandbox/clock")["now"]
    eta = jsonutil.iso_z(datetime.fromisoformat(now.replace("Z", "+00:00")) + timedelta(hours=2))
    aid = wms.ok(
        "PUT",
        "/api/ASN",
        {"WarehouseId": 2, "EstimatedDelivery": eta, "Items": [{"SKU": "MUG-STONE", "Quantity": 12}]},
    )["ID"]
    before = wms.level("MUG-STONE", 2)["TotalStockLevel"]
    wms.advance(1)
    assert wms.ok("GET", f"/api/ASN/{aid}")["Status"] == "New"
    wms.advance(2)
    assert wms.ok("GET", f"/api/ASN/{aid}")["Status"] == "BookedIn"
    assert wms.level("MUG-STONE", 2)["TotalStockLevel"] == before + 12


def test_returns_graded_restock_quarantine_scrap(wms: Wms) -> None:
    (so8,) = wms.parts("SO0001008")  # 10 TSHIRT-BLK-M despatched from Leeds
    before = wms.level("TSHIRT-BLK-M", 1)
    rid = wms.ok("POST", f"/api/Return/CreateReturn/{so8['ID']}")["ID"]
    for action, qty in (("Restock", 3), ("Quarantine", 2), ("Scrap", 1)):
        wms.ok(
            "POST",
            f"/api/Return/{rid}/AddItem",
            {"SKU": "TSHIRT-BLK-M", "Quantity": qty, "ReturnReasonId": 2, "Action": action},
        )
    assert "exceeds" in wms.refused(
        400, "POST", f"/api/Return/{rid}/AddItem", {"SKU": "TSHIRT-BLK-M", "Quantity": 5, "Action": "Restock"}
    )
    assert wms.level("TSHIRT-BLK-M", 1) == before  # nothing moves until confirmed
    wms.ok("GET", f"/api/Return/{rid}/Confirm")
    row = wms.level("TSHIRT-BLK-M", 1)
    assert row["TotalStockLevel"] == before["TotalStockLevel"] + 3
    assert row["InQuarantine"] == before["InQuarantine"] + 2
    ret = wms.ok("GET", f"/api/Return/{rid}")
    assert ret["Confirmed"] and ret["OrderNumber"] == "SO0001008"
    assert sorted((i["StockAction"], i["Quantity"]) for i in ret["Items"]) == [
        ("Quarantine", 2),
        ("Restock", 3),
        ("Scrap", 1),
    ]
    flows = {
        f["Flow"]: (f["LevelChange"], f["QuarantineChange"]) for f in wms.flows() if f["ReturnId"] == rid
    }
    assert flows == {"Return": (3, 0), "ReturnToQuarantine": (0, 2), "Scrap_Return": (0, 0)}
    assert rid in [r["ID"] for r in wms.ok("GET", "/api/Return/SearchByDate", FromDate=ret["CreatedDate"])]
    assert wms.ok("GET", f"/api/Return/{rid}/Items") == ret["Items"]
    new = wms.create("SO-NOTYET", [("MUG-STONE", 1)])["OrderId"]
    assert "despatched" in wms.refused(409, "POST", f"/api/Return/CreateReturn/{new}")


def test_warehouse_raises_returns_by_itself(wms: Wms) -> None:
    wms.admin("scenario", calm(return_rate=1).model_dump(mode="python"))
    wms.login()
    for n in range(3):
        wms.create(f"SO-RET{n}", [("CNDL-FIG-200", 2)])
    wms.advance(24 * 6)
    returns = wms.ok("GET", "/api/Return/SearchByDate", FromDate="2026-11-23T00:00:00Z")
    assert len(returns) == 3 and all(r["Confirmed"] for r in returns)
    assert {i["StockAction"] for r in returns for i in r["Items"]} <= {"Restock", "Quarantine", "Scrap"}
    for r in returns:
        assert r["OrderNumber"].startswith("SO-RET") and sum(i["Quantity"] for i in r["Items"]) <= 2


def test_scenario_receipts_and_part_despatched_orders_load_as_the_wms_holds_them(wms: Wms) -> None:
    sc = calm()
    start = sc.starts_at
    sc.receipts = [
        Receipt(
            reference="PO-IN",
            sku="MUG-STONE",
            warehouse="LEEDS",
            quantity=Decimal(10),
            unit_cost=Decimal("2.15"),
            expected=start - timedelta(days=1),
            booked_in_wms=True,
        ),
        Receipt(
            reference="PO-DUE",
            sku="CARD-XMAS-6",
            warehouse="BRISTOL",
            quantity=Decimal(2),
            unit_cost=Decimal("1.80"),
            expected=start + timedelta(hours=3),
        ),
    ]
    so1 = next(o for o in sc.orders if o.document_no == "SO0001001")  # 2 TSHIRT-BLK-M, 1 MUG-STONE
    so1.in_wms = WmsOrderState(status="PICKED", despatched_quantities={0: Decimal(1)})
    wms.admin("scenario", sc.model_dump(mode="python"))
    wms.login()

    parts = wms.parts("SO0001001")
    assert [(p["Part"], p["OrderStatus"]) for p in parts] == [(1, "DESPATCHED"), (2, "PICKED")]
    assert [(i["SKU"], i["QuantityDespatched"]) for i in parts[0]["OrderItems"]] == [("TSHIRT-BLK-M", 1)]
    assert sorted((i["SKU"], i["Quantity"], i["Allocated"]) for i in parts[1]["OrderItems"]) == [
        ("MUG-STONE", 1, 1),
        ("TSHIRT-BLK-M", 1, 1),
    ]
    tshirt = wms.level("TSHIRT-BLK-M", 1)
    assert (tshirt["TotalStockLevel"], tshirt["Allocated"]) == (144 - 10 - 1, 1)
    assert (
        wms.level("MUG-STONE", 1)["TotalStockLevel"] == 185 + 10
    )  # opening stock is the position before receipts: the booked-in receipt adds to it
    asns = {a["POReference"]: a for a in wms.ok("GET", "/api/ASN/List")}
    assert asns["PO-IN"]["Status"] == "BookedIn" and asns["PO-DUE"]["Status"] == "AwaitingDelivery"
    cards = wms.level("CARD-XMAS-6", 2)
    assert (cards["TotalStockLevel"], cards["OnOrder"]) == (162, 12)  # 2 packs of 6 eaches due

    wms.advance(4)
    cards = wms.level("CARD-XMAS-6", 2)
    assert (cards["TotalStockLevel"], cards["OnOrder"]) == (174, 0)
    assert wms.order(parts[1]["ID"])["OrderStatus"] == "DESPATCHED"

    so1.in_wms = WmsOrderState(status="DESPATCHED", despatched_quantities={0: Decimal(3)})
    message = wms.refused(400, "POST", "/_sandbox/scenario", sc.model_dump(mode="python"))
    assert "SO0001001" in message and "despatched_quantities[0]" in message


def test_evening_count_loses_a_share_of_the_days_sales(wms: Wms) -> None:
    wms.admin("scenario", calm(shrink_rate="0.5").model_dump(mode="python"))
    wms.login()
    wms.create("SO-SOLD", [("GIFTBOX-S", 10)])
    wms.advance(9)  # 17:00: despatched, not yet counted
    assert wms.level("GIFTBOX-S", 1)["TotalStockLevel"] == 290
    wms.advance(2)  # past the 18:00 count
    lost = [f for f in wms.flows() if f["Flow"] in {"Scrap", "CountCorrection"}]
    by_row: dict[tuple[str, int], int] = {}
    for f in lost:
        by_row[f["SKU"], f["WarehouseId"]] = by_row.get((f["SKU"], f["WarehouseId"]), 0) + f["LevelChange"]
    # Half of each day's sales: ours, and the demo's SO0001008 despatched at the scenario start.
    assert by_row == {("GIFTBOX-S", 1): -5, ("TSHIRT-BLK-M", 1): -5, ("MUG-STONE", 2): -3}
    assert wms.level("GIFTBOX-S", 1)["TotalStockLevel"] == 285


# ---- the admin surface -----------------------------------------------------------------------------


def test_bad_scenario_is_refused_naming_the_field_and_loads_nothing(wms: Wms) -> None:
    oid = wms.create("SO-KEEP", [("MUG-STONE", 1)])["OrderId"]
    bad = demo().model_dump(mode="json")
    bad["opening_stock"][0]["sage_confirmed"] = -5
    resp = wms.call("POST", "/_sandbox/scenario", bad, auth=False)
    assert resp.status_code == 400 and "opening_stock[0].sage_confirmed" in resp.json()["Message"]
    unknown = demo().model_dump(mode="json")
    unknown["opening_stock"][0]["warehouse"] = "ATLANTIS"
    resp = wms.call("POST", "/_sandbox/scenario", unknown, auth=False)
    assert resp.status_code == 400 and "opening_stock[0].warehouse" in resp.json()["Message"]
    assert wms.order(oid)["OrderNumber"] == "SO-KEEP"
    state = wms.ok("GET", "/_sandbox/state")
    assert state["scenario"] == "demo" and state["orders"]["NEW"] == 1


def test_clock_never_runs_backwards_and_can_run(wms: Wms) -> None:
    clock = wms.ok("GET", "/_sandbox/clock")
    assert clock["speed"] == 0 and clock["now"] == "2026-11-23T08:00:00.000Z"
    assert "backwards" in wms.refused(400, "POST", "/_sandbox/clock", {"set": "2026-11-22T00:00:00Z"})
    wms.admin("clock", {"set": "2026-11-24T09:00:00Z"})
    assert wms.ok("GET", "/_sandbox/clock")["now"] == "2026-11-24T09:00:00.000Z"
    wms.admin("clock", {"speed": 3600})
    later = wms.ok("GET", "/_sandbox/clock")
    assert later["now"] > "2026-11-24T09:00:00.000Z" and later["speed"] == 3600


def test_same_seed_same_warehouse_however_the_clock_is_stepped(wms: Wms) -> None:
    sc = demo()
    sc.behaviour = sc.behaviour.model_copy(
        update={
            "short_pick_rate": Decimal("0.3"),
            "split_rate": Decimal("0.3"),
            "multi_parcel_rate": Decimal("0.3"),
            "cancel_after_print_rate": Decimal("0.1"),
            "return_rate": Decimal("0.5"),
            "shrink_rate": Decimal("0.2"),
        }
    )
    lines = [("TSHIRT-BLK-M", 3), ("MUG-STONE", 2), ("GIFTBOX-S", 4), ("HOODIE-NVY-M", 1)]

    def run(steps: int) -> tuple[Any, ...]:
        wms.admin("scenario", sc.model_dump(mode="python"))
        wms.login()
        for n in range(8):
            wms.create(f"SO-D{n}", lines[: 1 + n % 4])
        for _ in range(steps):
            wms.advance(96 / steps)
        orders = wms.ok("GET", "/api/Order/List", Limit=100)
        return (
            [(o["ID"], o["OrderStatus"], o["Part"], o["LastUpdated"], o["TrackingNumber"]) for o in orders],
            [
                (f["ID"], f["Flow"], f["SKU"], f["LevelChange"], f["QuarantineChange"], f["Date"])
                for f in wms.flows(Limit=100)
            ],
            wms.ok("GET", "/api/Product/StockLevels", Limit=100),
        )

    one_jump, hourly = run(1), run(96)
    assert one_jump == hourly
    statuses = {o[1] for o in one_jump[0]}
    assert "DESPATCHED" in statuses and len(one_jump[1]) > 8


def test_state_survives_restart(tmp_path: Path) -> None:
    box = start_sandbox(tmp_path / "state", with_wms=True)
    try:
        assert box.wms_url
        wms = Wms(box.wms_url).login()
        wms.admin("clock", {"speed": 0})
        oid = wms.create("SO-PERSIST", [("MUG-STONE", 2)])["OrderId"]
        wms.advance(12)
        before = (wms.order(oid), wms.level("MUG-STONE", 1), wms.ok("GET", "/_sandbox/clock"))
    finally:
        box.stop()
    box = start_sandbox(tmp_path / "state", with_wms=True)
    try:
        assert box.wms_url
        wms = Wms(box.wms_url).login()
        after = (wms.order(oid), wms.level("MUG-STONE", 1), wms.ok("GET", "/_sandbox/clock"))
        assert after == before
        assert after[0]["OrderStatus"] == "DESPATCHED"
    finally:
        box.stop()
