"""Paging throughput of the Sage 200 client against a running simulator; prints figures.

    sage-wms sandbox serve --no-wms --sage-port 8200 &
    python -m sage_wms_pipeline.clients.sage200.benchmark --sage-url http://127.0.0.1:8200 --skus 5000

Loads a generated scenario (this REPLACES the simulator's data), then reads `warehouse_holdings`
with several page sizes and concurrency bounds, optionally with a per-request latency fault to
stand in for the real gateway's round trip.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200.client import Sage200Client
from sage_wms_pipeline.clients.sage200.config import Sage200Config

API = "/uk/sage200extra/accounts/v1/"


def _admin(base: str, path: str, body: object) -> None:
    httpx.post(
        base + path, content=jsonutil.dumps(body), headers={"Content-Type": "application/json"}, timeout=600
    ).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sage-url", required=True)
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--warehouses", type=int, default=3)
    parser.add_argument("--latency", default="0.05", help="seconds added to every request (slow fault)")
    args = parser.parse_args()

    from sage_wms_pipeline.scenario.generate import generate

    scenario = generate(skus=args.skus, warehouses=args.warehouses, orders_per_day=10, days=1, seed=42)
    started = time.perf_counter()
    _admin(args.sage_url, "/_sandbox/scenario", scenario.model_dump(mode="python"))
    print(f"loaded {args.skus} SKUs x {args.warehouses} warehouses in {time.perf_counter() - started:.1f}s")

    with tempfile.TemporaryDirectory() as tmp:
        config = Sage200Config(
            base_url=args.sage_url + API,
            token_url=args.sage_url + "/oauth/token",
            client_id="sandbox",
            client_secret="sandbox",
            refresh_token="sandbox-refresh",
            token_store_path=Path(tmp) / "token.json",
        )
        for latency in ("0", args.latency):
            _admin(args.sage_url, "/_sandbox/faults", {"slow_seconds": latency})
            for page_size, concurrency in ((500, 1), (500, 4), (500, 8), (5000, 1), (5000, 4)):
                cfg = config.model_copy(update={"page_size": page_size, "max_concurrency": concurrency})
                with Sage200Client(cfg) as client:
                    client.sites()  # token first, so it is not timed
                    started = time.perf_counter()
                    rows = client.list("warehouse_holdings")
                    elapsed = time.perf_counter() - started
                print(
                    f"latency {latency:>5}s  $top {page_size:>4}  concurrency {concurrency}:  "
                    f"{len(rows):>6} rows in {elapsed:6.2f}s = {len(rows) / elapsed:8.0f} rows/s  "
                    f"({client.stats.requests} requests)"
                )
        _admin(args.sage_url, "/_sandbox/faults", {"slow_seconds": "0"})


if __name__ == "__main__":
    main()
