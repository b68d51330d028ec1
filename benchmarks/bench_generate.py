"""Benchmark: generate, write and read a large scenario; optionally load it into running simulators.

    # 50k SKUs, 3 warehouses, 20k orders a day, for 1 and for 7 days:
    .venv/bin/python benchmarks/bench_generate.py
    # also time the load into running simulators (this replaces their data!):
    .venv/bin/python benchmarks/bench_generate.py --days 1 \\
        --sage-url http://127.0.0.1:8200 --wms-url http://127.0.0.1:8300

Prints one line per step with seconds, rows and file size. A script, not a test: figures vary
with the machine, so nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.scenario.io import load_into_sandbox, read_scenario, validate_scenario, write_scenario
from sage_wms_pipeline.scenario.model import Scenario

T = TypeVar("T")


def timed(label: str, fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<28} {seconds:8.2f} s", flush=True)
    return out, seconds


def describe(s: Scenario) -> str:
    lines = sum(len(o.lines) for o in s.orders)
    return (
        f"{len(s.products):,} SKUs, {len(s.warehouses)} warehouses, {len(s.opening_stock):,} stock rows, "
        f"{len(s.orders):,} orders / {lines:,} lines, {len(s.receipts):,} receipts, "
        f"{len(s.drift):,} drift rows"
    )


def _post(base: str, body: bytes) -> None:
    resp = httpx.post(
        base.rstrip("/") + "/_sandbox/scenario",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=httpx.Timeout(900.0, connect=10.0),
    )
    resp.raise_for_status()


def run(args: argparse.Namespace, days: int, workdir: Path) -> None:
    print(f"\n{args.skus:,} SKUs x {args.warehouses} warehouses x {args.orders_per_day:,} orders/day", end="")
    print(f" x {days} day(s)")
    scenario, t_gen = timed(
        "generate",
        lambda: generate(
            skus=args.skus,
            warehouses=args.warehouses,
            orders_per_day=args.orders_per_day,
            days=days,
            seed=args.seed,
        ),
    )
    print(f"  ({describe(scenario)})")
    path = workdir / f"bench-{days}d.json"
    _, t_write = timed("write JSON", lambda: write_scenario(scenario, path))
    size_mb = path.stat().st_size / 1e6
    print(f"  ({size_mb:,.1f} MB, {size_mb / t_write:,.1f} MB/s)")
    _, t_read = timed("read + validate JSON", lambda: read_scenario(path))
    total = t_gen + t_write + t_read
    print(f"  {'generate + write + read':<28} {total:8.2f} s")
    if args.sage_url:
        _, t_load = timed(
            "load into both simulators",
            lambda: load_into_sandbox(scenario, sage_url=args.sage_url, wms_url=args.wms_url),
        )
        print(f"  {'all of the above':<28} {total + t_load:8.2f} s")
        # Where the load time goes: our validation, then each simulator's POST on its own.
        timed("  of which: validate", lambda: validate_scenario(scenario))
        body = jsonutil.dumps(scenario.model_dump(mode="python")).encode("utf-8")
        for name, base in (("Sage", args.sage_url), ("WMS", args.wms_url)):
            if base:
                timed(f"  of which: POST to {name}", lambda base=base: _post(base, body))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS so far: {peak_mb:,.0f} MB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=50_000)
    p.add_argument("--warehouses", type=int, default=3)
    p.add_argument("--orders-per-day", type=int, default=20_000)
    p.add_argument("--days", type=int, action="append", help="repeatable; default 1 and 7")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sage-url", help="Sage 200 simulator base URL: also time the load (replaces its data)")
    p.add_argument("--wms-url", help="Mintsoft simulator base URL (with --sage-url)")
    p.add_argument("--keep", type=Path, help="write the files here instead of a temporary directory")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for days in args.days or [1, 7]:
            run(args, days, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
