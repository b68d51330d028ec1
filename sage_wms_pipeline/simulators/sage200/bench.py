"""Benchmark the Sage 200 simulator's load and queries at scale. Prints figures; asserts nothing.

.venv/bin/python -m sage_wms_pipeline.simulators.sage200.bench --skus 50000 --orders 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.generate import generate
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.simulators.sage200 import resources as R
from sage_wms_pipeline.simulators.sage200.service import Sage200

T = TypeVar("T")


def timed(label: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    out = fn()
    print(f"  {label:<52} {time.perf_counter() - start:8.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skus", type=int, default=50000)
    parser.add_argument("--orders", type=int, default=100000)
    parser.add_argument("--days", type=int, default=5)
    args = parser.parse_args()
    print(f"Sage 200 simulator: {args.skus} SKUs, ~{args.orders} orders")
    scenario = timed(
        "generate scenario (not the simulator's cost)",
        lambda: generate(
            skus=args.skus,
            warehouses=3,
            orders_per_day=max(1, args.orders // args.days),
            days=args.days,
            seed=42,
        ),
    )
    raw = jsonutil.dumps(scenario.model_dump(mode="python"))
    lines = sum(len(o.lines) for o in scenario.orders)
    print(
        f"  {len(scenario.products)} products, {len(scenario.orders)} orders, {lines} lines, "
        f"{len(raw) / 1e6:.1f} MB of JSON"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sage = timed("first start (builds the bundled demo)", lambda: Sage200(Path(tmp)))
        parsed = timed("parse JSON (exact decimals)", lambda: jsonutil.loads(raw))
        sc = timed("validate with the Scenario model", lambda: Scenario.model_validate(parsed))
        timed("load into SQLite (POST /_sandbox/scenario minus HTTP)", lambda: sage.load(sc))
        size = (Path(tmp) / "sage200.sqlite").stat().st_size
        print(f"  database file {size / 1e6:.1f} MB")
        timed("GET /sop_orders $top=500 $expand=lines", lambda: sage.list(R.SOP_ORDER, {"$expand": "lines"}))
        timed(
            "GET /sop_orders 5000, filter on date_time_updated",
            lambda: sage.list(
                R.SOP_ORDER, {"$top": "5000", "$filter": "date_time_updated gt 2000-01-01T00:00:00Z"}
            ),
        )
        timed(
            "GET /warehouse_holdings free_stock_available lt 5 (decimal)",
            lambda: sage.list(R.WAREHOUSE_HOLDING, {"$top": "5000", "$filter": "free_stock_available lt 5"}),
        )
        timed(
            "GET /products $orderby=standard_cost desc $skip=40000",
            lambda: sage.list(R.PRODUCT, {"$orderby": "standard_cost desc", "$skip": "40000", "$top": "500"}),
        )
        pending = sage.confirm_despatch_list({"$top": "50"})
        timed("GET /sop_confirm_despatch $top=50", lambda: sage.confirm_despatch_list({"$top": "50"}))

        def despatch_all() -> None:
            from sage_wms_pipeline.simulators.sage200.service import ConfirmDespatch

            for adj in pending:
                sage.confirm_despatch(
                    ConfirmDespatch.model_validate(
                        {
                            "sop_order_return_id": adj["sop_order_return_id"],
                            "items": [
                                {"id": i["id"], "quantity": i["available_quantity"]} for i in adj["items"]
                            ],
                        }
                    )
                )

        start = time.perf_counter()
        despatch_all()
        spent = time.perf_counter() - start
        print(
            f"  {'POST /sop_confirm_despatch, each':<52} {spent / max(1, len(pending)) * 1000:8.1f} ms "
            f"({len(pending)} orders)"
        )


if __name__ == "__main__":
    main()
