"""Benchmark: despatch latency in the demo, from the WMS despatch to its Sage posting, with 10% of
Sage writes meeting a 20 s desktop lock.

    .venv/bin/python benchmarks/bench_despatch_latency.py                # 15 minutes
    .venv/bin/python benchmarks/bench_despatch_latency.py --minutes 30

Runs the README's demo (`sage-wms demo --fresh`) in a scratch runtime directory on spare ports, so
the schedules and sensors run as a visitor sees them, and leaves it for `--minutes`. Then reads the
pipeline's outbox: for every posted row, the WMS despatch time (the despatch record's own stamp) and
the time the pipeline saw Sage accept it, and prints the despatch_latency check's figures (nearest-rank
p50/p95/max), with what the Sage simulator served (locks started and refused) and how the posting
runs went. The demo runs the warehouse on the wall clock, so both times are on one clock.

A script, not a test: it prints figures and asserts nothing. The demo's UI is at --ui-port meanwhile.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from sage_wms_pipeline import jsonutil
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
    parser.add_argument("--minutes", type=float, default=15)
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
    try:
        end = started + args.minutes * 60
        while time.monotonic() < end:
            if demo.poll() is not None:
                print(f"the demo stopped early (exit {demo.returncode}); see {log.name}")
                return 1
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            elapsed = (time.monotonic() - started) / 60
            print(f"  {elapsed:5.1f} min: {posted_count(runtime)} posting(s) so far", flush=True)
        served = httpx.get(f"http://127.0.0.1:{sage_port}/_sandbox/state", timeout=30).json()["faults_served"]
        report(runtime, served, args.minutes)
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(runtime)], check=False)
    return 0


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


def report(runtime: Path, served: dict[str, int], minutes: float) -> None:
    db = _db(runtime)
    if db is None:
        print("no pipeline database: nothing ran")
        return
    rows = db.outbox_rows()
    frame, origin = postings_frame(db, now=None)
    finding = checks.despatch_latency(frame, checks.Thresholds.from_policy(load_policy()))
    retried = [r for r in rows if int(r["attempts"] or 0) > 1]
    print(f"\nafter {minutes:g} minutes of the demo, lock_rate 10%, lock 20 s (despatch time from {origin}):")
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
