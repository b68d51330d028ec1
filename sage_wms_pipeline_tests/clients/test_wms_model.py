"""Pure tests of the canonical WMS model: monotonic status, dedupe keys, parsing, cursors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from sage_wms_pipeline.clients.wms import (
    MINTSOFT_STATUS_MAP,
    DespatchEvent,
    DespatchLine,
    OrderStatus,
    WmsOrder,
    apply_monotonic,
    dedupe,
    fold_orders,
    make_dedupe_key,
    status_accepts,
)
from sage_wms_pipeline.clients.wms.base import PROGRESS_RANK
from sage_wms_pipeline.clients.wms.mintsoft import MintsoftClient, MintsoftConfig, parse_timestamp

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
S = OrderStatus


def order(status: OrderStatus, minutes: int, order_id: str = "7", raw: str | None = None) -> WmsOrder:
    at = T0 + timedelta(minutes=minutes)
    raw = raw or status.value
    return WmsOrder(
        vendor="mintsoft",
        order_id=order_id,
        order_number="SO1",
        status=status,
        raw_status=raw,
        updated_at=at,
        dedupe_key=WmsOrder.key_for("mintsoft", order_id, raw, at),
    )


# ---------------------------------------------------------------------------- apply_monotonic


def test_first_sighting_is_taken() -> None:
    first = order(S.PRINTED, 5)
    assert apply_monotonic(None, first) is first


def test_late_progress_event_never_moves_backwards() -> None:
    packed = order(S.PACKED, 60)
    assert apply_monotonic(packed, order(S.PICKED, 50)) is packed
    # Even a later timestamp cannot undo packing: only listed real backward moves can.
    assert apply_monotonic(packed, order(S.PICKED, 70)) is packed


def test_forward_progress_wins_even_with_an_older_stamp() -> None:
    # Clock skew between WMS hosts: the more advanced state is still the truth.
    picked = order(S.PICKED, 10)
    assert apply_monotonic(order(S.PRINTED, 20), picked) is picked


def test_same_rank_takes_the_newer_copy_and_ignores_repeats() -> None:
    printed = order(S.PRINTED, 10, raw="PRINTED")
    awaiting = order(S.PRINTED, 20, raw="AWAITINGPICKING")
    assert apply_monotonic(printed, awaiting) is awaiting
    assert apply_monotonic(awaiting, printed) is awaiting
    assert apply_monotonic(awaiting, awaiting.model_copy()) is awaiting


def test_terminal_states_absorb() -> None:
    despatched = order(S.DESPATCHED, 100)
    for status in S:
        if status is not S.DESPATCHED:
            assert apply_monotonic(despatched, order(status, 200)) is despatched, status
    cancelled = order(S.CANCELLED, 30)
    assert apply_monotonic(cancelled, order(S.PICKING, 40)) is cancelled
    assert apply_monotonic(cancelled, order(S.ON_HOLD, 40)) is cancelled


def test_terminal_beats_any_open_state() -> None:
    for status in S:
        if status not in (S.DESPATCHED, S.CANCELLED):
            assert apply_monotonic(order(status, 50), order(S.DESPATCHED, 10)).status is S.DESPATCHED
            assert apply_monotonic(order(status, 50), order(S.CANCELLED, 10)).status is S.CANCELLED


def test_side_states_follow_time() -> None:
    picking = order(S.PICKING, 30)
    backorder = order(S.ON_BACKORDER, 40)  # picked short
    assert apply_monotonic(picking, backorder) is backorder
    assert apply_monotonic(backorder, order(S.PICKING, 35)) is backorder  # late copy of the old state
    reallocated = order(S.ALLOCATED, 90)  # stock arrived
    assert apply_monotonic(backorder, reallocated) is reallocated
    assert apply_monotonic(order(S.PICKED, 50), order(S.ON_HOLD, 45)).status is S.PICKED


def test_unprint_is_a_real_backward_move_only_when_newer() -> None:
    printed = order(S.PRINTED, 30)
    assert apply_monotonic(printed, order(S.ALLOCATED, 40)).status is S.ALLOCATED
    assert apply_monotonic(printed, order(S.ALLOCATED, 20)) is printed


def test_apply_monotonic_refuses_another_order() -> None:
    with pytest.raises(ValueError, match="order_id mintsoft:8"):
        apply_monotonic(order(S.NEW, 0, "7"), order(S.NEW, 1, "8"))


def test_any_delivery_order_of_a_realistic_history_folds_to_the_same_state() -> None:
    history = [
        order(S.ALLOCATED, 0),
        order(S.PRINTED, 30, raw="PRINTED"),
        order(S.ON_HOLD, 40, raw="HOLDING"),
        order(S.PRINTED, 50, raw="AWAITINGPICKING"),
        order(S.PICKING, 60),
        order(S.PICKED, 90),
    ]
    finals = {fold_orders(p)["7"] for p in itertools.permutations(history)}
    assert finals == {history[-1]}
    with_repeats = [*history, history[2], history[0], history[4]]
    assert fold_orders(with_repeats)["7"] == history[-1]


def test_progress_ranks_follow_the_floor() -> None:
    chain = [S.NEW, S.ALLOCATED, S.PRINTED, S.PICKING, S.PICKED, S.PACKED, S.DESPATCHED]
    assert [PROGRESS_RANK[s] for s in chain] == sorted(PROGRESS_RANK[s] for s in chain)
    for earlier, later in itertools.pairwise(chain):
        assert status_accepts(earlier, T0, later, T0)
        assert not status_accepts(later, T0, earlier, T0)


def test_every_mintsoft_status_has_a_deliberate_mapping() -> None:
    assert MINTSOFT_STATUS_MAP["NEW"] is S.ALLOCATED  # Mintsoft NEW means stock allocated
    assert MINTSOFT_STATUS_MAP["ONBACKORDER"] is S.ON_BACKORDER
    assert MINTSOFT_STATUS_MAP["PACKANDHOLD"] is S.PACKED
    assert MINTSOFT_STATUS_MAP["INVOICED"] is S.DESPATCHED
    assert MINTSOFT_STATUS_MAP["HOLDING"] is S.ON_HOLD


# ------------------------------------------------------------------------------------ dedupe


def parcel(shipment: str, tracking: str, qty: str, minutes: int = 0) -> DespatchEvent:
    lines = (DespatchLine(sku="MUG", quantity=Decimal(qty), warehouse_id="1"),)
    at = T0 + timedelta(minutes=minutes)
    return DespatchEvent(
        vendor="mintsoft",
        order_id="7",
        order_number="SO1",
        shipment_id=shipment,
        tracking_number=tracking,
        despatched_at=at,
        lines=lines,
        raw_status="DESPATCHED",
        dedupe_key=DespatchEvent.key_for("mintsoft", "7", shipment, tracking, at, lines),
    )


def test_repeat_delivery_of_a_parcel_has_the_same_key_and_a_second_parcel_does_not() -> None:
    first = parcel("1", "RM1GB", "2")
    again = parcel("1", "RM1GB", "2.00")  # same event re-sent, quantity written differently
    second = parcel("2", "RM2GB", "2")  # second parcel of the same order, same contents
    assert first.dedupe_key == again.dedupe_key
    assert first.dedupe_key != second.dedupe_key
    assert dedupe([first, second, again, first]) == [first, second]


def test_dedupe_key_separates_what_differs_and_normalises_time_zones() -> None:
    base = make_dedupe_key("mintsoft", "despatch", "7", Decimal("2"), T0)
    same_instant = T0.astimezone(timezone(timedelta(hours=1)))
    assert make_dedupe_key("mintsoft", "despatch", "7", Decimal("2.0"), same_instant) == base
    assert make_dedupe_key("mintsoft", "despatch", "7", Decimal("3"), T0) != base
    assert make_dedupe_key("mintsoft", "return", "7", Decimal("2"), T0) != base
    assert make_dedupe_key("peoplevox", "despatch", "7", Decimal("2"), T0) != base
    assert make_dedupe_key("mintsoft", "despatch", "7", Decimal("2"), T0 + timedelta(seconds=1)) != base


def test_dedupe_keeps_arrival_order_of_first_copies() -> None:
    a, b, c = order(S.NEW, 0, "1"), order(S.NEW, 0, "2"), order(S.NEW, 0, "3")
    assert dedupe([b, a, b, c, a]) == [b, a, c]
    assert dedupe([]) == []


# ---------------------------------------------------------------------------- parsing, config


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T08:00:00.000Z",
        "2026-11-23T08:00:00",
        "2026-11-23T09:00:00+01:00",
        "23/11/2026 08:00:00",
        "/Date(1795420800000)/",
    ],
)
def test_timestamps_in_any_server_culture(text: str) -> None:
    assert parse_timestamp(text) == T0


def test_bad_timestamp_is_named() -> None:
    with pytest.raises(ValueError, match="not a timestamp: 'yesterday'"):
        parse_timestamp("yesterday")


def test_config_hides_the_password_and_bounds_the_page_size() -> None:
    cfg = MintsoftConfig(base_url="https://api.mintsoft.co.uk/api/", username="u", password="s3cret")
    assert cfg.base_url == "https://api.mintsoft.co.uk"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())
    with pytest.raises(ValueError, match="page_size"):
        MintsoftConfig(base_url="x", username="u", password="p", page_size=101)
    client = MintsoftClient(cfg)
    assert "s3cret" not in repr(client)
    client.close()


def test_a_cursor_from_another_stream_is_refused() -> None:
    with MintsoftClient.from_settings("http://127.0.0.1:9", "u", "p") as client:
        with pytest.raises(ValueError, match="not a mintsoft despatches cursor"):
            client.despatches_since("mintsoft:orders:2026-11-23T08:00:00.000Z")
        with pytest.raises(ValueError, match="not a mintsoft movements cursor"):
            client.stock_movements_since("mintsoft:movements:2026")
