"""Input frames for the reconciliation core derived from a Scenario, as the APIs would report it
straight after a load (per docs/scenarios.md): the test's independent route to the same data."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pandas as pd

from sage_wms_pipeline.domain.units import to_e5
from sage_wms_pipeline.scenario.model import Scenario


def frames(s: Scenario) -> dict[str, pd.DataFrame]:
    prod = {p.sku: p for p in s.products}
    group = {g.code: g for g in s.product_groups}
    wh = {w.sage_name: w.wms_warehouse_id for w in s.warehouses}
    wms: dict[tuple[str, int], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    sage: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for o in s.opening_stock:
        p = prod[o.sku]
        in_stock = o.sage_confirmed + o.sage_unconfirmed
        sage[(o.sku, o.warehouse)] += in_stock
        pos = wms[(p.wms_code, wh[o.warehouse])]
        pos[0] += o.wms_on_hand if o.wms_on_hand is not None else in_stock * p.wms_units_per_sage_unit
        pos[1] += o.wms_quarantine
    events = []
    for order in s.orders:
        if order.in_wms is None:
            continue
        for idx, qty in order.in_wms.despatched_quantities.items():
            line = order.lines[idx]
            p = prod[line.sku]
            wqty = qty * p.wms_units_per_sage_unit
            wms[(p.wms_code, wh[line.warehouse])][0] -= wqty
            events.append(("despatch_not_posted", order.document_no, p.wms_code, wh[line.warehouse], wqty))
    for r in s.receipts:
        p = prod[r.sku]
        if r.booked_in_wms:
            wms[(p.wms_code, wh[r.warehouse])][0] += r.quantity * p.wms_units_per_sage_unit
        if r.posted_to_sage:
            sage[(r.sku, r.warehouse)] += r.quantity
        if r.booked_in_wms and not r.posted_to_sage:
            events.append(
                (
                    "receipt_not_in_sage",
                    r.reference,
                    p.wms_code,
                    wh[r.warehouse],
                    r.quantity * p.wms_units_per_sage_unit,
                )
            )
    cutoff = pd.Timestamp(s.starts_at)
    wms_df = pd.DataFrame(
        [(k[0], k[1], to_e5(v[0]), to_e5(v[1])) for k, v in wms.items()],
        columns=["wms_sku", "wms_warehouse_id", "sellable_e5", "quarantine_e5"],
    )
    sage_df = pd.DataFrame(
        [(k[0], k[1], prod[k[0]].group, to_e5(v), to_e5(v)) for k, v in sage.items()],
        columns=["sku", "warehouse", "product_group", "quantity_in_stock_e5", "free_stock_e5"],
    )
    ev_df = pd.DataFrame(
        {
            "kind": [e[0] for e in events],
            "reference": [e[1] for e in events],
            "wms_sku": [e[2] for e in events],
            "wms_warehouse_id": [e[3] for e in events],
            "quantity_e5": [to_e5(e[4]) for e in events],
            "event_at": pd.Series([cutoff - timedelta(hours=1)] * len(events), dtype="datetime64[ns, UTC]"),
            "sage_posted_at": pd.Series([pd.NaT] * len(events), dtype="datetime64[ns, UTC]"),
        }
    )
    prices = pd.DataFrame(
        [
            (
                p.sku,
                p.group,
                group[p.group].costing_method,
                group[p.group].stock_nominal_code,
                to_e5(p.unit_cost),
                to_e5(p.unit_cost),
            )
            for p in s.products
            if group[p.group].product_type == "Stock"
        ],
        columns=[
            "sku",
            "product_group",
            "costing_method",
            "stock_nominal_code",
            "standard_cost_e5",
            "average_buying_price_e5",
        ],
    )
    layers = pd.DataFrame(
        [
            (o.sku, o.warehouse, pd.Timestamp(layer.received), to_e5(layer.quantity), to_e5(layer.unit_cost))
            for o in s.opening_stock
            for layer in o.fifo_layers
        ],
        columns=["sku", "warehouse", "received_at", "quantity_e5", "unit_cost_e5"],
    )
    return {
        "wms_stock": wms_df,
        "sage_holdings": sage_df,
        "explanations": ev_df,
        "prices": prices,
        "fifo_layers": layers,
        "cutoff": cutoff,
    }
