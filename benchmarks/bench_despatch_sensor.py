"""Benchmark: one evaluation of the WMS despatch sensor on a peak day, against the Mintsoft simulator.

    .venv/bin/python benchmarks/bench_despatch_sensor.py                 # 20,000 despatched orders
    .venv/bin/python benchmarks/bench_despatch_sensor.py --orders 5000

Generates a scenario whose live orders are all despatched in the WMS (a peak day's despatches, all
inside the client's look-back window: the worst case for a steady-state tick), serves it from a
fresh simulator on loopback, and times:

- the first tick (no cursor: every despatch is read and requested),
- a steady-state tick (cursor saved; the look-back window is re-read, nothing is new),
- the sensor's own work (dedupe, hashing, cursor JSON) on the same events without HTTP,
- with --compare-verified, the same read by the ingest client (one extra GET per order id).

Dagster's sensor timeout is 60 s. A script, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.wms.base import Batch, DespatchEvent
from sage_wms_pipeline.defs.resources import WmsResource
from sage_wms_pipeline.defs.sensors.despatch import evaluate, run_key_for
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.scenario.model import Scenario, WmsOrderState

T = TypeVar("T")


def timed(label: str, fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<44} {seconds:8.2f} s", flush=True)
    return out, seconds


def peak_day(orders: int, skus: int, seed: int) -> Scenario:
    """Every live order with a stock line despatched in the WMS; stock deep enough to ship them."""
    sc = generate(skus=skus, warehouses=3, orders_per_day=orders, days=1, seed=seed, drift_per_kind=1)
    stock_type = {g.code: g.product_type for g in sc.product_groups}
    stocked = {p.sku for p in sc.products if stock_type[p.group] == "Stock"}
    for order in sc.orders:
        shipped = {
            i: ln.quantity
            for i, ln in enumerate(order.lines)
            if ln.line_type == "Standard" and ln.sku in stocked
        }
        if order.status == "Live" and shipped:
            order.in_wms = WmsOrderState(status="DESPATCHED", despatched_quantities=shipped)
    for row in sc.opening_stock:
        units = sc.product(row.sku).wms_units_per_sage_unit
        row.wms_on_hand = (row.sage_confirmed + row.sage_unconfirmed) * units + 100_000
    sc.drift, sc.expected = [], []
    return sc


class _Replay:
    """Stands in for a WmsClient returning a fixed batch: the sensor's own cost, without HTTP."""

    def __init__(self, batch: Batch[DespatchEvent]) -> None:
        self.batch = batch

    def __enter__(self) -> _Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def despatches_since(self, cursor: str | None) -> Batch[DespatchEvent]:
        return self.batch


class _ReplayResource(WmsResource):
    def client(self) -> Any:
        return _Replay(_BATCH[0])


_BATCH: list[Batch[DespatchEvent]] = []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--skus", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--compare-verified",
        action="store_true",
        help="also time the ingest client's read, which checks every order id with a GET of its own",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sage_wms_pipeline_tests.conftest import start_sandbox

    print(f"peak day: {args.orders:,} orders over {args.skus:,} SKUs, 3 warehouses", flush=True)
    scenario, _ = timed("generate scenario", lambda: peak_day(args.orders, args.skus, args.seed))
    despatched = sum(1 for o in scenario.orders if o.in_wms is not None)
    print(f"  {despatched:,} orders despatched in the WMS", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        box = start_sandbox(Path(tmp) / "state")
        try:
            body = jsonutil.dumps(scenario.model_dump(mode="python"))
            assert box.wms_url is not None
            resp, _ = timed(
                "load into the WMS simulator",
                lambda: httpx.post(
                    f"{box.wms_url}/_sandbox/scenario",
                    content=body,
                    headers={"Content-Type": "application/json"},
                    timeout=900,
                ),
            )
            if resp.status_code != 200:
                print(f"  the simulator refused the scenario: {resp.text[:500]}", flush=True)
                return 1
            wms = WmsResource(
                base_url=box.wms_url, username="sandbox", password="sandbox", deadline_seconds=300
            )
            first, t_first = timed("first tick (no cursor, full read)", lambda: evaluate(wms, None))
            print(f"  {len(first.new_events):,} new events, {first.quarantined} quarantined", flush=True)
            cursor = first.cursor.dump()
            print(f"  cursor size {len(cursor) / 1024:,.1f} KiB", flush=True)
            steady, t_steady = timed(
                "steady tick (look-back re-read, none new)", lambda: evaluate(wms, cursor)
            )
            print(f"  {steady.read:,} events re-read, {len(steady.new_events)} new", flush=True)

            if args.compare_verified:

                def full_read(cursor: str | None) -> int:
                    with wms.client() as client:
                        return len(client.despatches_since(cursor).records)

                wms_cursor = first.cursor.wms
                timed("ingest client read, no cursor (look-ups on)", lambda: full_read(None))
                timed("ingest client read, look-back (look-ups on)", lambda: full_read(wms_cursor))

            _BATCH.append(Batch[DespatchEvent](records=list(first.new_events)))
            replay = _ReplayResource(base_url="http://unused", password="x")
            timed("sensor work only, first tick (no HTTP)", lambda: evaluate(replay, None))
            timed("sensor work only, steady tick (no HTTP)", lambda: evaluate(replay, cursor))
            timed("run key over all events", lambda: run_key_for(e.dedupe_key for e in first.new_events))
        finally:
            box.stop()
    verdict = "within" if max(t_first, t_steady) < 60 else "OVER"
    print(f"slowest tick {max(t_first, t_steady):.1f} s: {verdict} Dagster's 60 s sensor timeout", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
