"""Despatch sensor: new WMS despatch events request a `despatch_posting_job` run.

WMS despatch feeds are at-least-once, unordered and sometimes late (a despatch can surface after
others stamped later). The overlap window is the WMS client's: every incremental read goes back
`lookback_seconds` (Mintsoft: 2 h) before the stored cursor, so late events are read again. The
sensor remembers the dedupe keys it has already acted on, for `SEEN_RETENTION` of event time (longer
than any client lookback), so the overlap never produces a second request for the same event.

The run key is a hash of the sorted dedupe keys of the new events: a repeated tick (a tick whose
cursor was not saved) or a tick after the cursor was reset finds the same events, asks for a run
Dagster has already launched and is skipped. Even a differently-keyed run cannot post twice: the
outbox is keyed by the events' dedupe keys.

Cost: a tick reads the look-back window; the first tick, or one after a reset, reads everything the
WMS still lists, once. Measured against the simulator (benchmarks/bench_despatch_sensor.py) with
20,000 despatched orders all inside the window, the worst case: 23 s a tick, cursor 210 KiB, the
sensor's own work 0.05 s; Dagster's limit is 60 s. It reads through `light_client`, below.

The cursor is JSON: ``{"wms": <client cursor>, "seen": {despatched_at epoch s: base64 fingerprints}}``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.wms.base import DespatchEvent, WmsClient
from sage_wms_pipeline.defs.jobs import despatch_posting_job
from sage_wms_pipeline.defs.resources import WmsResource
from sage_wms_pipeline.defs.schedules import sensor_status

# Event time kept after the newest despatch seen: must exceed the client's lookback (Mintsoft: 2 h).
SEEN_RETENTION = timedelta(hours=3)
# Remembered events are 64-bit fingerprints of their dedupe keys, packed per despatch second, so a
# peak day's cursor stays in the low hundreds of KiB (a collision needs ~2^32 events in the window).
FINGERPRINT_BYTES = 8
# How often the WMS is polled: most of a despatch's latency to Sage. Each tick costs a read of the
# look-back window (one or two calls on a normal day; Mintsoft allows about 15 calls per 15 s).
POLL_SECONDS_ENV = "SAGE_WMS_DESPATCH_POLL_SECONDS"
MINIMUM_INTERVAL_SECONDS = int(os.environ.get(POLL_SECONDS_ENV) or 30)


def fingerprint(dedupe_key: str) -> bytes:
    return hashlib.blake2b(dedupe_key.encode(), digest_size=FINGERPRINT_BYTES).digest()


@dataclass
class DespatchCursor:
    wms: str | None = None
    seen: dict[bytes, int] = field(default_factory=dict)  # fingerprint -> despatched_at, epoch s

    @classmethod
    def parse(cls, raw: str | None) -> DespatchCursor:
        if not raw:
            return cls()
        try:
            data = jsonutil.loads(raw)
            seen: dict[bytes, int] = {}
            for epoch, packed in data.get("seen", {}).items():
                blob = base64.b64decode(packed, validate=True)
                for i in range(0, len(blob), FINGERPRINT_BYTES):
                    seen[blob[i : i + FINGERPRINT_BYTES]] = int(epoch)
            return cls(wms=data.get("wms"), seen=seen)
        except (ValueError, AttributeError, TypeError):
            # A hand-set cursor (a client cursor typed in the UI) means "read from there".
            return cls(wms=raw)

    def dump(self) -> str:
        by_time: dict[int, list[bytes]] = {}
        for fp, epoch in self.seen.items():
            by_time.setdefault(epoch, []).append(fp)
        seen = {
            str(t): base64.b64encode(b"".join(sorted(fps))).decode() for t, fps in sorted(by_time.items())
        }
        return jsonutil.dumps({"wms": self.wms, "seen": seen})

    def knows(self, event: DespatchEvent) -> bool:
        return fingerprint(event.dedupe_key) in self.seen

    def remember(self, event: DespatchEvent) -> None:
        self.seen[fingerprint(event.dedupe_key)] = int(event.despatched_at.timestamp())

    def prune(self) -> None:
        if not self.seen:
            return
        horizon = max(self.seen.values()) - int(SEEN_RETENTION.total_seconds())
        self.seen = {k: t for k, t in self.seen.items() if t >= horizon}


def light_client(wms: WmsResource) -> WmsClient:
    """The resource's client, minus per-record existence look-ups where the client makes them.

    The Mintsoft client checks every listed order id with a GET of its own (to quarantine junk rows
    naming unknown orders), which on a peak day is tens of thousands of calls per tick, far past the
    60 s sensor timeout (see benchmarks/bench_despatch_sensor.py). The sensor only decides whether to
    launch a posting run; that run's ingest reads with the checks on. A junk row can at worst launch
    one run that finds nothing to post.
    """
    client = wms.client()
    config = getattr(client, "config", None)
    if getattr(config, "verify_order_ids", False) and hasattr(config, "model_copy"):
        client.config = config.model_copy(update={"verify_order_ids": False})  # type: ignore[attr-defined]
    return client


def run_key_for(dedupe_keys: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(set(dedupe_keys))).encode()).hexdigest()[:32]
    return f"despatch-{digest}"


@dataclass(frozen=True)
class Evaluation:
    new_events: Sequence[DespatchEvent]
    read: int
    quarantined: int
    cursor: DespatchCursor


def evaluate(wms: WmsResource, raw_cursor: str | None) -> Evaluation:
    """One tick's work, without Dagster: read, drop what was acted on before, remember what is new."""
    state = DespatchCursor.parse(raw_cursor)
    with light_client(wms) as client:
        batch = client.despatches_since(state.wms)
    new: dict[str, DespatchEvent] = {}
    for event in batch.records:
        if not state.knows(event) and event.dedupe_key not in new:
            new[event.dedupe_key] = event
    for event in new.values():
        state.remember(event)
    state.prune()
    # Never move the cursor backwards: an empty read may return no cursor at all.
    state.wms = batch.next_cursor or state.wms
    return Evaluation(
        new_events=list(new.values()),
        read=len(batch.records),
        quarantined=len(batch.quarantined),
        cursor=state,
    )


@dg.sensor(
    name="wms_despatch_sensor",
    job=despatch_posting_job,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=sensor_status(),
    description=(
        "Polls WMS despatches (re-reading the client's look-back window for late events) and requests "
        "despatch_posting_job for new ones; run key = hash of their dedupe keys."
    ),
)
def wms_despatch_sensor(context: dg.SensorEvaluationContext, wms: WmsResource) -> dg.SensorResult:
    result = evaluate(wms, context.cursor)
    cursor = result.cursor.dump()
    if not result.new_events:
        note = f" ({result.quarantined} malformed record(s) quarantined)" if result.quarantined else ""
        return dg.SensorResult(skip_reason=dg.SkipReason(f"no new despatch events{note}"), cursor=cursor)
    events = sorted(result.new_events, key=lambda e: (e.despatched_at, e.order_number, e.dedupe_key))
    orders = sorted({e.order_number for e in events})
    context.log.info(
        f"{len(events)} new despatch event(s) for {len(orders)} order(s): {', '.join(orders[:20])}"
    )
    request = dg.RunRequest(
        run_key=run_key_for(e.dedupe_key for e in events),
        tags={
            "sage_wms/trigger": "wms_despatch_sensor",
            "sage_wms/despatch_events": str(len(events)),
            "sage_wms/orders": ",".join(orders[:10]) + (" …" if len(orders) > 10 else ""),
            "sage_wms/earliest_despatch": jsonutil.iso_z(events[0].despatched_at),
        },
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)
