"""Benchmark of the Mintsoft simulator over real HTTP; prints figures, asserts nothing.

    python -m sage_wms_pipeline.simulators.mintsoft.bench [--orders 600] [--days 3]

Serves the simulator on a loopback port in a temporary data dir, loads a generated scenario
(200 SKUs, 3 warehouses), creates orders through `PUT /api/Order`, runs the living warehouse for
some days in one-hour steps, then pages through orders, stock levels and the stock flow ledger.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.simulators.mintsoft.app import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path) -> tuple[uvicorn.Server, str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(data_dir), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=600)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()

    scenario = generate(skus=200, warehouses=3, orders_per_day=200, days=7, seed=42)
    with tempfile.TemporaryDirectory() as tmp:
        server, base = _serve(Path(tmp))
        http = httpx.Client(base_url=base, timeout=300)

        def post(path: str, body: Any) -> Any:
            resp = http.post(path, content=jsonutil.dumps(body), headers={"Content-Type": "application/json"})
            resp.raise_for_status()
            return jsonutil.loads(resp.content)

        secs, _ = _timed(lambda: post("/_sandbox/scenario", scenario.model_dump(mode="python")))
        print(
            f"load scenario ({len(scenario.products)} SKUs, "
            f"{len(scenario.opening_stock)} stock rows): {secs:.2f} s"
        )
        key = post("/api/Auth", {"Username": "sandbox", "Password": "sandbox"})
        headers = {"ms-apikey": key, "Content-Type": "application/json"}
        products = {p.sku: p for p in scenario.products}
        warehouses = {w.sage_name: w.wms_warehouse_id for w in scenario.warehouses}
        skus = {r["SKU"] for r in _pages(http, headers, "/api/Product/List")}

        latencies = []
        created = 0
        for so in scenario.orders:
            if created >= args.orders:
                break
            items = [
                {
                    "SKU": products[ln.sku].wms_code,
                    "Quantity": ln.quantity * products[ln.sku].wms_units_per_sage_unit,
                    "UnitPrice": ln.unit_price,
                    "WarehouseId": warehouses[ln.warehouse],
                }
                for ln in so.lines
                if ln.line_type == "Standard" and ln.sku and products[ln.sku].wms_code in skus
            ]
            if not items or so.in_wms is not None:
                continue
            body = {
                "OrderNumber": so.document_no,
                "WarehouseId": items[0]["WarehouseId"],
                "CourierService": so.courier_service,
                "Country": "GB",
                "OrderItems": items,
            }
            secs, resp = _timed(
                lambda b=body: http.put("/api/Order", content=jsonutil.dumps(b), headers=headers)
            )
            resp.raise_for_status()
            latencies.append(secs)
            created += 1
        print(
            f"PUT /api/Order x{created}: median {statistics.median(latencies) * 1000:.1f} ms, "
            f"p95 {sorted(latencies)[int(len(latencies) * 0.95)] * 1000:.1f} ms"
        )

        steps = []
        for _ in range(args.days * 24):
            secs, _ = _timed(lambda: post("/_sandbox/clock", {"advance_seconds": 3600}))
            steps.append(secs)
        state = http.get("/_sandbox/state").json()
        print(
            f"advance {args.days} warehouse days in 1 h steps: total {sum(steps):.2f} s, "
            f"slowest hour {max(steps) * 1000:.0f} ms; orders now {state['orders']}, "
            f"ledger rows {state['stock_flow_rows']}, returns {state['returns']}"
        )

        key = post("/api/Auth", {"Username": "sandbox", "Password": "sandbox"})
        headers["ms-apikey"] = key
        for path in ("/api/Order/List", "/api/Product/StockLevels", "/api/Product/StockFlow"):
            secs, rows = _timed(lambda p=path: _pages(http, headers, p))
            print(f"GET {path}: {len(rows)} rows in {secs:.2f} s ({len(rows) / max(secs, 1e-9):.0f} rows/s)")
        server.should_exit = True


def _pages(http: httpx.Client, headers: dict[str, str], path: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        resp = http.get(path, params={"PageNo": page, "Limit": 100}, headers=headers)
        resp.raise_for_status()
        batch = jsonutil.loads(resp.content)
        if not batch:
            return rows
        rows.extend(batch)
        page += 1


if __name__ == "__main__":
    main()
