from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sage_wms_pipeline.domain import outbox as ob
from sage_wms_pipeline.domain.despatch_posting import (
    SageOpenLine,
    WmsDespatchLine,
    counts_at_trigger,
    plan_postings,
)
from sage_wms_pipeline.domain.policy import Policy, load_policy

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
POLICY = load_policy()


def _wms(order: str, ref: str, sku: str, wh: int, qty: str, status: str = "DESPATCHED") -> WmsDespatchLine:
    return WmsDespatchLine(order, ref, sku, wh, Decimal(qty), status, T0)


SAGE = [
    SageOpenLine("SO0001003", 3, 31, "CANDLE-FIG", "BRISTOL", Decimal(12)),
    SageOpenLine("SO0001003", 3, 32, "GIFTBOX-S", "LEEDS", Decimal(12)),
    SageOpenLine("SO0001005", 5, 51, "CARD-XMAS-6", "3PL-MK", Decimal(2)),
    SageOpenLine("SO0001005", 5, 52, "MUG-STONE", "3PL-MK", Decimal(1)),
    SageOpenLine("SO0001005", 5, 53, "MUG-STONE", "3PL-MK", Decimal(4)),
]


@pytest.mark.parametrize(
    ("trigger", "counted"),
    [
        ("pick", {"PICKED", "PACKANDHOLD", "DESPATCHED"}),
        ("pack", {"PACKANDHOLD", "DESPATCHED"}),
        ("despatch", {"DESPATCHED"}),
    ],
)
def test_statuses_counted_at_each_trigger(trigger: str, counted: set[str]) -> None:
    statuses = ["NEW", "PRINTED", "PICKINGSTARTED", "PICKED", "PACKANDHOLD", "DESPATCHED", "CANCELLED"]
    assert {s for s in statuses if counts_at_trigger(s, trigger)} == counted  # type: ignore[arg-type]


def test_lines_map_to_sage_lines_in_sage_units() -> None:
    plan = plan_postings(
        [
            _wms("SO0001003", "1", "CNDL-FIG-200", 2, "12"),
            _wms("SO0001003-2", "1", "GIFTBOX-S", 1, "5"),
            _wms("SO0001005", "1", "CARD-XMAS-6", 3, "12"),
            _wms("SO0001005", "2", "MUG-STONE", 3, "3"),
        ],
        SAGE,
        POLICY,
    )
    assert not plan.orphans
    got = [(p.document_no, p.line_id, p.quantity, p.dedupe_key) for p in plan.postings]
    assert got == [
        ("SO0001003", 31, Decimal(12), "wms:SO0001003:1"),
        ("SO0001003", 32, Decimal(5), "wms:SO0001003-2:1"),
        ("SO0001005", 51, Decimal(2), "wms:SO0001005:1"),  # 12 eaches = 2 packs
        ("SO0001005", 52, Decimal(1), "wms:SO0001005:2@52"),  # split over two Sage lines
        ("SO0001005", 53, Decimal(2), "wms:SO0001005:2@53"),
    ]


def test_orphans_and_not_yet_and_already_known() -> None:
    lines = [
        _wms("SO0009999", "1", "MUG-STONE", 1, "1"),  # no such Sage order
        _wms("SO0001003", "2", "MUG-STONE", 2, "1"),  # order exists, no such line
        _wms("SO0001005", "3", "CARD-XMAS-6", 3, "5"),  # 5 eaches is not whole packs at 5 dp? 0.83333..
        _wms("SO0001003", "4", "CNDL-FIG-200", 2, "13"),  # one more than outstanding
        _wms("SO0001003", "5", "CNDL-FIG-200", 2, "1", status="PICKED"),  # not at the despatch trigger
        _wms("SO0001003", "6", "GIFTBOX-S", 1, "1"),  # already in the outbox
    ]
    plan = plan_postings(lines, SAGE, POLICY, known_keys={"wms:SO0001003:6"})
    reasons = [o.reason for o in plan.orphans]
    assert reasons[0] == "no Sage order SO0009999"
    assert reasons[1] == "order SO0001003 has no open line for MUG-STONE in BRISTOL"
    assert "not a positive whole number of Sage units" in reasons[2]
    assert reasons[3].startswith("exceeds outstanding") and plan.orphans[3].quantity == Decimal(1)
    assert [(p.line_id, p.quantity) for p in plan.postings] == [(31, Decimal(12))]
    assert [line.line_ref for line in plan.not_yet] == ["5"]
    assert [line.line_ref for line in plan.already_known] == ["6"]


def test_pick_trigger_posts_picked_lines() -> None:
    policy = Policy.model_validate({**POLICY.model_dump(), "fulfilment_trigger": "pick"})
    plan = plan_postings([_wms("SO0001003", "1", "CNDL-FIG-200", 2, "2", status="PICKED")], SAGE, policy)
    assert len(plan.postings) == 1


def test_outbox_state_machine() -> None:
    ob.check_transition("k", "pending", "posting")
    ob.check_transition("k", "posting", "posting")  # lease expired, re-claimed
    with pytest.raises(ob.OutboxTransitionError, match="k: state: cannot go from posted to pending"):
        ob.check_transition("k", "posted", "pending")
    with pytest.raises(ob.OutboxTransitionError):
        ob.check_transition("k", "pending", "posted")


def test_a_lock_is_retried_steadily_during_the_linger_then_backed_off() -> None:
    def due(attempts: int) -> timedelta:
        d = ob.after_failure("lock", attempts=attempts, created_at=T0, now=T0, policy=POLICY, error="in use")
        assert d.state == "deferred" and d.next_attempt_at is not None
        return d.next_attempt_at - T0

    o = POLICY.outbox
    quick = o.lock_linger_seconds // o.lock_retry_seconds
    assert quick >= 2  # the shipped policy retries a short lock more than once within a run
    assert [due(a) for a in range(1, quick + 1)] == [timedelta(seconds=o.lock_retry_seconds)] * quick
    after = due(quick + 1)
    assert (
        timedelta(seconds=o.backoff_base_seconds) <= after < timedelta(seconds=o.backoff_base_seconds * 1.11)
    )
    assert due(quick + 2) > after


def test_failures_defer_with_growing_backoff_then_stick() -> None:
    d1 = ob.after_failure("transient", attempts=1, created_at=T0, now=T0, policy=POLICY, error="503", key="k")
    d3 = ob.after_failure("transient", attempts=3, created_at=T0, now=T0, policy=POLICY, error="503", key="k")
    assert d1.state == d3.state == "deferred"
    assert d1.next_attempt_at is not None and d3.next_attempt_at is not None
    assert timedelta(seconds=30) <= d1.next_attempt_at - T0 < timedelta(seconds=34)
    assert timedelta(seconds=120) <= d3.next_attempt_at - T0 < timedelta(seconds=133)
    late = T0 + timedelta(minutes=POLICY.lock_deadline_minutes)
    assert (
        ob.after_failure("lock", attempts=9, created_at=T0, now=late, policy=POLICY, error="x").state
        == "stuck"
    )
    refused = ob.after_failure("refused", attempts=1, created_at=T0, now=T0, policy=POLICY, error="on hold")
    assert refused.state == "stuck" and "on hold" in refused.reason
    # never deferred past the deadline
    near = T0 + timedelta(minutes=POLICY.lock_deadline_minutes) - timedelta(seconds=5)
    d = ob.after_failure("transient", attempts=8, created_at=T0, now=near, policy=POLICY, error="503")
    assert d.next_attempt_at == T0 + timedelta(minutes=POLICY.lock_deadline_minutes)
