"""Event delivery faults of the Mintsoft simulator: what a robust client has to survive."""

from __future__ import annotations

from typing import Any

import pytest

from sage_wms_pipeline_tests.conftest import Sandbox
from sage_wms_pipeline_tests.simulators.test_mintsoft_simulator import Wms, calm, order_body


@pytest.fixture
def wms(sandbox: Sandbox) -> Wms:
    assert sandbox.wms_url, "the Mintsoft simulator is not being served"
    client = Wms(sandbox.wms_url)
    client.admin("scenario", calm().model_dump(mode="python"))
    return client.login()


def despatch_some(wms: Wms, n: int = 6) -> list[int]:
    ids = [wms.create(f"SO-F{i}", [("GIFTBOX-S", 1 + i)])["OrderId"] for i in range(n)]
    wms.advance(12)
    assert {wms.order(i)["OrderStatus"] for i in ids} == {"DESPATCHED"}
    return ids


def test_duplicates_repeat_records_in_the_page(wms: Wms) -> None:
    ids = despatch_some(wms)
    clean = wms.ok("GET", "/api/Order/List")
    wms.admin("faults", {"duplicate_rate": 1})
    page = wms.ok("GET", "/api/Order/List")
    assert len(page) == 2 * len(clean)
    assert [o["ID"] for o in page] == [o["ID"] for o in clean for _ in (0, 1)]
    assert set(ids) <= {o["ID"] for o in page}
    flows = wms.flows()
    assert len(flows) == 2 * len({f["ID"] for f in flows})


def test_out_of_order_swaps_records(wms: Wms) -> None:
    despatch_some(wms)
    clean = [o["ID"] for o in wms.ok("GET", "/api/Order/List")]
    wms.admin("faults", {"out_of_order_rate": 1})
    shuffled = [o["ID"] for o in wms.ok("GET", "/api/Order/List")]
    assert sorted(shuffled) == sorted(clean) and shuffled != clean


def test_malformed_records_are_injected(wms: Wms) -> None:
    ids = despatch_some(wms)
    clean = [o["ID"] for o in wms.ok("GET", "/api/Order/List")]
    wms.admin("faults", {"malformed_rate": 1})
    page = wms.ok("GET", "/api/Order/List")
    junk = [o for o in page if _is_junk(o)]
    assert len(junk) * 2 == len(page)
    assert [o["ID"] for o in page if not _is_junk(o)] == clean
    flows = wms.flows()
    known_orders = set(ids) | {o["ID"] for o in wms.parts("SO0001008")}
    bad_flows = [
        f
        for f in flows
        if f["Quantity"] < 0
        or f["ProductId"] == 0
        or (f["OrderId"] is not None and f["OrderId"] not in known_orders)
    ]
    assert len(bad_flows) == len(flows) // 2


def _is_junk(order: dict[str, Any]) -> bool:
    items = order.get("OrderItems") or []
    return (
        order["OrderNumber"].startswith("UNKNOWN-")
        or any(i["Quantity"] < 0 for i in items)
        or any(i["SKU"].startswith("UNKNOWN-SKU-") for i in items)
    )


def test_late_despatch_surfaces_after_the_delay_with_its_older_timestamp(wms: Wms) -> None:
    wms.admin("faults", {"late_rate": 1, "late_seconds": 10 * 3600})
    oid = wms.create("SO-LATE", [("MUG-STONE", 1)])["OrderId"]
    wms.advance(8)
    truth = wms.order(oid)
    assert truth["OrderStatus"] == "DESPATCHED"
    assert oid not in [o["ID"] for o in wms.ok("GET", "/api/Order/List", OrderStatusId=4)]
    watermark = wms.ok("GET", "/_sandbox/clock")["now"]
    wms.advance(10)
    surfaced = [o for o in wms.ok("GET", "/api/Order/List", OrderStatusId=4) if o["ID"] == oid]
    assert surfaced and surfaced[0]["LastUpdated"] == truth["LastUpdated"] < watermark
    # A client that only asks for changes since its watermark never sees it.
    assert oid not in [o["ID"] for o in wms.ok("GET", "/api/Order/List", SinceLastUpdated=watermark)]


def test_throttling_and_outages(wms: Wms) -> None:
    wms.admin("faults", {"rate_429": 1, "retry_after_seconds": 7})
    resp = wms.call("GET", "/api/Order/Statuses")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    wms.admin("faults", {"rate_429": 0, "rate_5xx": 1})
    assert wms.call("GET", "/api/Order/Statuses").status_code in {500, 502, 503}
    wms.admin("faults", {"rate_5xx": "0.5"})
    codes = [wms.call("GET", "/api/Order/Statuses").status_code for _ in range(40)]
    assert 200 in codes and set(codes) - {200}
    # A refused create changes nothing: the order can be created once the outage is over.
    wms.admin("faults", {"rate_5xx": 1})
    assert wms.call("PUT", "/api/Order", order_body("SO-OUT", [("MUG-STONE", 1)])).status_code >= 500
    wms.admin("faults", {"rate_5xx": 0})
    assert wms.parts("SO-OUT") == []


def test_faults_are_deterministic_from_the_seed(wms: Wms) -> None:
    despatch_some(wms)

    def sample() -> list[Any]:
        wms.admin(
            "faults",
            {
                "seed": 7,
                "duplicate_rate": "0.3",
                "out_of_order_rate": "0.3",
                "malformed_rate": "0.3",
                "rate_5xx": "0.2",
            },
        )
        out = []
        for _ in range(6):
            resp = wms.call("GET", "/api/Order/List")
            out.append(resp.status_code if resp.status_code != 200 else resp.text)
        return out

    state = wms.ok("GET", "/_sandbox/state")
    first = sample()
    wms.admin("scenario", calm().model_dump(mode="python"))
    wms.login()
    despatch_some(wms)
    assert wms.ok("GET", "/_sandbox/state")["orders"] == state["orders"]
    assert sample() == first


def test_bad_fault_settings_are_refused(wms: Wms) -> None:
    assert "duplicate_rate" in wms.refused(400, "POST", "/_sandbox/faults", {"duplicate_rate": 2})
    assert "colour" in wms.refused(400, "POST", "/_sandbox/faults", {"colour": "red"})
    assert wms.ok("GET", "/_sandbox/faults")["duplicate_rate"] == 0
