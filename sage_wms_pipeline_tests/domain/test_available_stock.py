from __future__ import annotations

import pandas as pd

from sage_wms_pipeline.domain.available_stock import available_stock
from sage_wms_pipeline.domain.policy import Policy
from sage_wms_pipeline.domain.units import to_e5

POLICY = Policy.model_validate(
    {
        "warehouses": [{"sage_name": "LEEDS", "wms_warehouse_id": 1}],
        "skus": [{"sage_code": "CARD6", "wms_sku": "CARD6", "wms_units_per_sage_unit": 6}],
    }
)


def test_available_is_wms_stock_less_open_allocations_beside_sage_free_stock() -> None:
    wms = pd.DataFrame(
        {
            "wms_sku": ["MUG", "CARD6", "TEE"],
            "wms_warehouse_id": [1, 1, 1],
            "sellable_e5": [to_e5(100), to_e5(60), to_e5(5)],
            "quarantine_e5": [to_e5(4), 0, 0],
        }
    )
    alloc = pd.DataFrame(
        {
            "order_number": ["A", "B", "C", "D", "E", "F"],
            "wms_sku": ["MUG", "MUG", "MUG", "MUG", "CARD6", "GHOST"],
            "wms_warehouse_id": [1, 1, 1, 1, 1, 1],
            "wms_status": ["NEW", "PICKINGSTARTED", "PACKANDHOLD", "DESPATCHED", "PICKED", "NEW"],
            "quantity_e5": [to_e5(3), to_e5(2), to_e5(1), to_e5(50), to_e5(12), to_e5(1)],
        }
    )
    sage = pd.DataFrame(
        {
            "sku": ["MUG", "CARD6"],
            "warehouse": ["LEEDS", "LEEDS"],
            "product_group": ["HOME", "GIFTS"],
            "quantity_in_stock_e5": [to_e5(110), to_e5(10)],
            "free_stock_e5": [to_e5(104), to_e5(9)],
        }
    )
    df = available_stock(wms, alloc, POLICY, sage).set_index("sku")
    # MUG: 100 sellable (quarantine already outside) - 6 open (despatched no longer holds stock)
    assert df.loc["MUG", "wms_allocated_e5"] == to_e5(6)
    assert df.loc["MUG", "available_e5"] == to_e5(94)
    assert df.loc["MUG", "difference_e5"] == to_e5(-10)
    # CARD6: 60 - 12 eaches = 48 eaches = 8 packs
    assert (df.loc["CARD6", "wms_available_e5"], df.loc["CARD6", "available_e5"]) == (to_e5(48), to_e5(8))
    assert pd.isna(df.loc["TEE", "sage_free_stock_e5"])
    # an allocation on a SKU the WMS holds none of shows as negative availability
    assert df.loc["GHOST", "available_e5"] == to_e5(-1)
