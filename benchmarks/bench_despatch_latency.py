"""Benchmark: despatch latency in the demo, from the WMS despatch to its Sage posting, with 10% of
Sage writes meeting a 20 s desktop lock.

    .venv/bin/python benchmarks/bench_despatch_latency.py                    # 20 minutes, 3 orders/min
    .venv/bin/python benchmarks/bench_despatch_latency.py --minutes 30 --orders-per-minute 0

Runs the README's demo (`sage-wms demo --fresh`) in a scratch runtime directory on spare ports, so
the schedules and sensors run as a visitor sees them, and leaves it for `--minutes`. The demo data
has only a handful of orders to send, so meanwhile a web shop keys `--orders-per-minute` new sales
orders into Sage through its REST API (one or two in-stock lines each, for the first 3/4 of the
time, so the last ones can be despatched before the end), giving a steady flow to measure. Then reads the
pipeline's outbox: for every posted row, the WMS despatch time (the despatch record's own stamp) and
the time the pipeline saw Sage accept it, and prints the despatch_latency check's figures (nearest-rank
p50/p95/max), with what the Sage simulator served (locks started and refused) and how the posting
runs went. The demo runs the warehouse on the wall clock, so both times are on one clock.

A script, not a test: it prints figures and asserts nothing. The demo's UI is at --ui-port meanwhile.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import sqlalchemy as sa

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200.client import Sage200Client
from sage_wms_pipeline.clients.sage200.config import Sage200Config
from sage_wms_pipeline.defs.checks.fulfilment import postings_frame
from sage_wms_pipeline.domain import checks
from sage_wms_pipeline.domain.policy import load_policy
from sage_wms_pipeline.storage.db import Database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--orders-per-minute", type=float, default=3)
    parser.add_argument("--ui-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--keep", action="store_true", help="keep the scratch runtime directory")
    args = parser.parse_args()

    runtime = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    sage_port, wms_port = free_port(), free_port()
    ui_port = args.ui_port or free_port()
    env = {**os.environ, "SAGE_WMS_RUNTIME_DIR": str(runtime)}
    cmd = [
        str(Path(sys.executable).parent / "sage-wms"),
        "demo",
        "--fresh",
        "--sage-port",
        str(sage_port),
        "--wms-port",
        str(wms_port),
        "--ui-port",
        str(ui_port),
    ]
    log = open(runtime.parent / f"{runtime.name}.log", "wb")  # noqa: SIM115 - lives as long as the demo
    print(f"demo: UI http://127.0.0.1:{ui_port}, runtime {runtime}, log {log.name}", flush=True)
    demo = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    stop = threading.Event()
    fed: list[str] = []
    try:
        end = started + args.minutes * 60
        if args.orders_per_minute > 0:
            feed = threading.Thread(
                target=web_shop,
                args=(sage_port, args.orders_per_minute, started + args.minutes * 45, stop, fed),
                daemon=True,
            )
            feed.start()
        while time.monotonic() < end:
            if demo.poll() is not None:
                print(f"the demo stopped early (exit {demo.returncode}); see {log.name}")
                return 1
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            elapsed = (time.monotonic() - started) / 60
            print(
                f"  {elapsed:5.1f} min: {len(fed)} order(s) keyed, {posted_count(runtime)} posting(s)",
                flush=True,
            )
        served = httpx.get(f"http://127.0.0.1:{sage_port}/_sandbox/state", timeout=30).json()["faults_served"]
        report(runtime, served, args.minutes, len(fed))
    finally:
        stop.set()
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(runtime)], check=False)
    return 0


def web_shop(sage_port: int, per_minute: float, until: float, stop: threading.Event, fed: list[str]) -> None:
    """Key sales orders into Sage as a web shop integration would, until `until` (monotonic)."""
    base = f"http://127.0.0.1:{sage_port}"
    config = Sage200Config(
        base_url=f"{base}/uk/sage200extra/accounts/v1/",
        token_url=f"{base}/oauth/token",
        client_id="sandbox",
        client_secret="sandbox",
        refresh_token="sandbox-refresh",
    )
    rng = random.Random(7)
    time.sleep(20)  # the demo loads its data first
    with Sage200Client(config) as sage:
        # Its own authorisation, as a second integration would have: the demo's refresh token rotates.
        sage.authorize("sandbox-code", "http://localhost/callback")
        stock_groups = {
            g["id"] for g in sage.list("product_groups") if g["product_type"] == "EnumStockItemTypeStock"
        }
        products = {p["id"] for p in sage.list("products") if p["product_group_id"] in stock_groups}
        holdings = [
            h
            for h in sage.list("warehouse_holdings")
            if h["product_id"] in products and Decimal(str(h["confirmed_qty_in_stock"])) >= 50
        ]
        customers = [c["id"] for c in sage.list("customers")][:20]
        while not stop.is_set() and time.monotonic() < until:
            lines = [
                {"product_id": h["product_id"], "warehouse_id": h["warehouse_id"], "line_quantity": 1}
                for h in rng.sample(holdings, rng.choice((1, 1, 2)))
            ]
            order = sage.post("sop_orders", {"customer_id": rng.choice(customers), "lines": lines})
            fed.append(str(order["document_no"]))  # type: ignore[index]
            stop.wait(60 / per_minute)


def _db(runtime: Path) -> Database | None:
    path = runtime / "pipeline.sqlite"
    return Database(f"sqlite:///{path}") if path.exists() else None


def posted_count(runtime: Path) -> int:
    db = _db(runtime)
    if db is None:
        return 0
    try:
        return sum(1 for r in db.outbox_rows(state="posted"))
    except sa.exc.OperationalError:  # tables not created yet
        return 0


def report(runtime: Path, served: dict[str, int], minutes: float, keyed: int) -> None:
    db = _db(runtime)
    if db is None:
        print("no pipeline database: nothing ran")
        return
    rows = db.outbox_rows()
    frame, origin = postings_frame(db, now=None)
    finding = checks.despatch_latency(frame, checks.Thresholds.from_policy(load_policy()))
    retried = [r for r in rows if int(r["attempts"] or 0) > 1]
    print(
        f"\nafter {minutes:g} minutes of the demo with {keyed} order(s) keyed, lock_rate 10%, lock 20 s "
        f"(despatch time from {origin}):"
    )
    for key, value in finding.figures.items():
        print(f"  {key:<28} {value}")
    print(f"  {'outbox rows by state':<28} {_by_state(rows)}")
    print(f"  {'rows posted after deferral':<28} {len(retried)}")
    print(f"  {'sage faults served':<28} {jsonutil.dumps(served)}")
    if not finding.rows.empty:
        print("\nslowest postings past the SLA:\n" + finding.rows.head(10).to_string(index=False))
    seconds = sorted(
        int((p - d).total_seconds())
        for d, p in zip(frame["despatched_at"], frame["posted_at"], strict=True)
        if d is not None and p is not None
    )
    print(f"\nall latencies, seconds: {seconds}")


def _by_state(rows: list[dict[str, object]]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["state"])] = counts.get(str(r["state"]), 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
