"""A small stock position (one Sage warehouse, LEEDS = WMS warehouse 1, group HOME) as the frames
the parity and valuation functions take, shared by the check-logic and check-asset tests."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd

E5 = 10**5

# sku -> (costing method, unit cost £, Sage quantity in LEEDS)
Catalogue = dict[str, tuple[str, Decimal, int]]


def position_frames(
    catalogue: Catalogue, wms_qty: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """WMS stock (Sage's quantity unless `wms_qty` says otherwise), Sage holdings, no explaining
    events, and Sage prices: the inputs of `stock_parity` and `valuation_deltas`."""
    skus = list(catalogue)
    wms = pd.DataFrame(
        {
            "wms_sku": skus,
            "wms_warehouse_id": 1,
            "sellable_e5": [int(Decimal(wms_qty.get(s, str(catalogue[s][2]))) * E5) for s in skus],
            "quarantine_e5": 0,
        }
    )
    sage = pd.DataFrame(
        {
            "sku": skus,
            "warehouse": "LEEDS",
            "product_group": "HOME",
            "quantity_in_stock_e5": [catalogue[s][2] * E5 for s in skus],
            "free_stock_e5": [catalogue[s][2] * E5 for s in skus],
        }
    )
    no_events = pd.DataFrame(
        {
            "kind": pd.Series([], dtype=str),
            "reference": pd.Series([], dtype=str),
            "wms_sku": pd.Series([], dtype=str),
            "wms_warehouse_id": pd.Series([], dtype="int64"),
            "quantity_e5": pd.Series([], dtype="int64"),
            "event_at": pd.Series([], dtype="datetime64[ns, UTC]"),
            "sage_posted_at": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )
    prices = pd.DataFrame(
        {
            "sku": skus,
            "product_group": "HOME",
            "costing_method": [catalogue[s][0] for s in skus],
            "stock_nominal_code": "1002",
            "standard_cost_e5": [int(catalogue[s][1] * E5) for s in skus],
            "average_buying_price_e5": [int(catalogue[s][1] * E5) for s in skus],
        }
    )
    return wms, sage, no_events, prices
