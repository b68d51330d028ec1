"""The despatch outbox's state machine: one record per WMS despatch line to post to Sage.

    pending ──claim──▶ posting ──ok──▶ posted
       ▲                 │  ├─lock / API fault──▶ deferred ──due──▶ posting
       │                 │  └─refused, or locked past the deadline──▶ stuck
       └──── retry (by hand, after the cause is fixed) ◀── stuck

A claimed record whose worker died stays ``posting`` with an expired lease and is claimable
again. Marking a posted record posted again changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sage_wms_pipeline.domain.policy import Policy

State = Literal["pending", "posting", "posted", "deferred", "stuck"]
FailureKind = Literal["lock", "transient", "refused"]
STATES: tuple[State, ...] = ("pending", "posting", "posted", "deferred", "stuck")
CLAIMABLE: tuple[State, ...] = ("pending", "deferred")
FINAL: tuple[State, ...] = ("posted",)

TRANSITIONS: dict[State, frozenset[State]] = {
    "pending": frozenset({"posting"}),
    "deferred": frozenset({"posting", "stuck"}),
    # posting -> posting is a re-claim after the lease ran out.
    "posting": frozenset({"posting", "posted", "deferred", "stuck"}),
    "stuck": frozenset({"pending"}),
    "posted": frozenset(),
}


class OutboxTransitionError(ValueError):
    pass


def check_transition(record: str, current: State, new: State) -> None:
    if new not in TRANSITIONS[current]:
        raise OutboxTransitionError(f"outbox {record}: state: cannot go from {current} to {new}")


def backoff(attempts: int, policy: Policy, key: str = "") -> timedelta:
    """base × 2^(attempts-1), capped, plus up to 10% jitter derived from the key (repeatable)."""
    o = policy.outbox
    seconds = min(o.backoff_max_seconds, o.backoff_base_seconds * 2 ** max(attempts - 1, 0))
    jitter = int(hashlib.sha256(f"{key}:{attempts}".encode()).hexdigest()[:8], 16) % 1000
    return timedelta(seconds=seconds, milliseconds=seconds * jitter // 10)


@dataclass(frozen=True)
class Decision:
    state: State
    next_attempt_at: datetime | None
    reason: str


def after_failure(
    kind: FailureKind,
    *,
    attempts: int,
    created_at: datetime,
    now: datetime,
    policy: Policy,
    error: str,
    key: str = "",
) -> Decision:
    """What a failed post leads to: deferred with a next attempt time, or stuck."""
    if kind == "refused":
        return Decision("stuck", None, f"Sage refused the despatch: {error}")
    deadline = created_at + timedelta(minutes=policy.lock_deadline_minutes)
    if now >= deadline:
        what = "locked" if kind == "lock" else "failing"
        minutes = policy.lock_deadline_minutes
        return Decision("stuck", None, f"still {what} {minutes} min after creation: {error}")
    # A desktop user's lock usually clears within seconds: retry it at a steady short interval for
    # about the posting run's linger (so the run itself posts it soon after), then back off.
    o = policy.outbox
    quick = o.lock_linger_seconds // o.lock_retry_seconds if kind == "lock" else 0
    if attempts <= quick:
        delay = timedelta(seconds=o.lock_retry_seconds)
    else:
        delay = backoff(attempts - quick, policy, key)
    return Decision("deferred", min(now + delay, deadline), error)
