"""The despatch sensor against the Mintsoft simulator over HTTP: first tick, nothing new, new and late
and repeated events, a repeated tick and a cursor reset asking for the same run (same run key)."""

from __future__ import annotations

from decimal import Decimal

import dagster as dg
import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.wms.base import ManifestLine, OrderManifest
from sage_wms_pipeline.defs.resources import WmsResource
from sage_wms_pipeline.defs.sensors.despatch import (
    DespatchCursor,
    fingerprint,
    light_client,
    run_key_for,
    wms_despatch_sensor,
)

HOUR = 3600


@pytest.fixture
def wms(sandbox) -> WmsResource:
    if sandbox.wms_url is None:
        pytest.skip("the Mintsoft simulator is not available")
    return WmsResource(base_url=sandbox.wms_url, username="sandbox", password="sandbox")


def _admin(sandbox, path: str, body: dict) -> None:
    resp = httpx.post(
        f"{sandbox.wms_url}/_sandbox/{path}",
        content=jsonutil.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    resp.raise_for_status()


def _tick(wms: WmsResource, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(cursor=cursor, resources={"wms": wms}) as ctx:
        result = wms_despatch_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def _all_despatch_keys(wms: WmsResource) -> list[str]:
    with wms.client() as client:
        return [e.dedupe_key for e in client.despatches_since(None).records]


def _send_order(wms: WmsResource, number: str, sku: str = "MUG-STONE", qty: str = "2") -> None:
    manifest = OrderManifest(
        order_number=number,
        external_reference=number,
        warehouse_id="1",
        first_name="Test",
        last_name="Customer",
        address_1="1 High Street",
        town="Leeds",
        postcode="LS1 1AA",
        lines=(ManifestLine(sku=sku, quantity=Decimal(qty), unit_price=Decimal("9.50")),),
    )
    with wms.client() as client:
        assert client.create_order(manifest).created


def test_first_tick_requests_one_run_keyed_by_the_events(wms):
    keys = _all_despatch_keys(wms)
    assert keys, "the demo scenario has SO0001008 despatched in the WMS"
    result = _tick(wms, None)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.run_key == run_key_for(keys)
    assert request.tags["sage_wms/despatch_events"] == str(len(keys))
    assert "SO0001008" in request.tags["sage_wms/orders"]
    assert result.cursor and DespatchCursor.parse(result.cursor).wms


def test_nothing_new_skips_but_keeps_the_cursor(wms):
    first = _tick(wms, None)
    second = _tick(wms, first.cursor)
    assert not second.run_requests
    assert second.skip_reason is not None and "no new despatch events" in second.skip_reason.skip_message
    assert DespatchCursor.parse(second.cursor).wms == DespatchCursor.parse(first.cursor).wms


def test_new_despatches_get_their_own_run_and_a_repeated_tick_the_same_key(sandbox, wms):
    first = _tick(wms, None)
    before = set(_all_despatch_keys(wms))
    _send_order(wms, "TST-0001")
    _admin(sandbox, "clock", {"advance_seconds": 12 * HOUR})
    new_keys = [k for k in _all_despatch_keys(wms) if k not in before]
    assert new_keys, "the order should have despatched after 12 warehouse hours"

    second = _tick(wms, first.cursor)
    assert len(second.run_requests) == 1
    assert second.run_requests[0].run_key == run_key_for(new_keys)
    assert second.run_requests[0].tags["sage_wms/orders"] == "TST-0001"

    # The same tick again (say its cursor was never saved) asks for the very same run: Dagster skips it.
    again = _tick(wms, first.cursor)
    assert [r.run_key for r in again.run_requests] == [second.run_requests[0].run_key]
    # And from the saved cursor there is nothing new.
    assert not _tick(wms, second.cursor).run_requests


def test_late_repeated_and_out_of_order_events_are_requested_once(sandbox, wms):
    first = _tick(wms, None)
    _admin(
        sandbox,
        "faults",
        {"duplicate_rate": "1", "out_of_order_rate": "1", "late_rate": "1", "late_seconds": 3 * HOUR},
    )
    _send_order(wms, "TST-LATE")
    _admin(sandbox, "clock", {"advance_seconds": 6 * HOUR})  # despatched, but held back by the WMS
    held = _tick(wms, first.cursor)
    assert not held.run_requests

    _admin(sandbox, "clock", {"advance_seconds": 3 * HOUR})  # now it surfaces, stamped earlier
    late = _tick(wms, held.cursor)
    assert len(late.run_requests) == 1
    request = late.run_requests[0]
    assert request.tags["sage_wms/orders"] == "TST-LATE"
    # Every page repeats its records, yet each event is counted (and keyed) once.
    _admin(sandbox, "faults", {"duplicate_rate": "0", "out_of_order_rate": "0", "late_rate": "0"})
    with wms.client() as client:
        late_keys = [
            e.dedupe_key for e in client.despatches_since(None).records if e.order_number == "TST-LATE"
        ]
    assert request.run_key == run_key_for(late_keys)
    assert request.tags["sage_wms/despatch_events"] == str(len(late_keys))

    # Re-reading the overlap with the repeats still on finds nothing new.
    _admin(sandbox, "faults", {"duplicate_rate": "1", "out_of_order_rate": "1"})
    assert not _tick(wms, late.cursor).run_requests


def test_cursor_reset_asks_for_the_run_already_launched(wms):
    first = _tick(wms, None)
    assert not _tick(wms, first.cursor).run_requests
    reset = _tick(wms, None)
    # Same events, same key: the daemon will not launch it again (and the outbox dedupes regardless).
    assert [r.run_key for r in reset.run_requests] == [r.run_key for r in first.run_requests]


def test_cursor_round_trip_and_pruning():
    a, b, c = fingerprint("a"), fingerprint("b"), fingerprint("c")
    cursor = DespatchCursor(
        wms="mintsoft:despatches:2026-11-23T08:00:00.000Z", seen={a: 100_000, b: 10, c: 100_000}
    )
    cursor.prune()  # "b" is more than the retention window of event time older than "a" and "c"
    assert DespatchCursor.parse(cursor.dump()) == DespatchCursor(
        wms=cursor.wms, seen={a: 100_000, c: 100_000}
    )
    # A client cursor typed in by hand is taken as where to read from.
    assert DespatchCursor.parse("mintsoft:despatches:2026-11-23T08:00:00.000Z").wms.startswith("mintsoft:")


def test_the_sensor_reads_without_per_order_look_ups_and_the_ingest_client_keeps_them(wms):
    with wms.client() as full, light_client(wms) as light:
        assert full.config.verify_order_ids
        assert not light.config.verify_order_ids
        assert [e.dedupe_key for e in light.despatches_since(None).records] == [
            e.dedupe_key for e in full.despatches_since(None).records
        ]
