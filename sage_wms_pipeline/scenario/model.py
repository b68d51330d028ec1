"""The scenario file: one retailer, loaded consistently into both simulators.

A scenario is the single source of demo and test data. Both the Sage 200 and the Mintsoft
simulator load the same file, each taking its own side (Sage names and ids vs WMS SKUs and
warehouse ids, linked by the mappings held here). Planted drift carries its ground truth, so a
test can check that the pipeline finds exactly what was planted.

Quantities and money are Decimal end to end; JSON numbers are read without passing through float.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ProductType = Literal["Stock", "ServiceLabour", "Miscellaneous"]
CostingMethod = Literal["FIFO", "Average", "Standard"]
LineType = Literal["Standard", "FreeText", "Charge", "Comment"]
OrderStatus = Literal["Live", "OnHold", "Cancelled", "Draft"]
WmsOrderStatus = Literal[
    "NEW",
    "PRINTED",
    "AWAITINGPICKING",
    "PICKINGSTARTED",
    "PICKED",
    "PACKANDHOLD",
    "DESPATCHED",
    "CANCELLED",
    "HOLDING",
    "ONBACKORDER",
]
DriftKind = Literal[
    "despatched_not_posted",  # timing: despatched in the WMS, not yet posted to Sage at cut-off
    "received_not_in_sage",  # timing: booked in at the WMS, not yet in Sage
    "return_in_quarantine",  # status: returned stock held in WMS quarantine
    "uom_mismatch",  # mapping: WMS counts eaches where Sage counts packs
    "bin_mis_slot",  # nets to zero per warehouse: no variance at SKU/warehouse level
    "true_shrink",  # unexplained: stock missing in the WMS
    "true_gain",  # unexplained: stock found in the WMS
    "standard_cost_change",  # valuation: standard cost changed mid-period
]
VarianceCause = Literal["timing", "status", "mapping", "unexplained"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ProductGroup(_Strict):
    code: str = Field(max_length=20)
    name: str = Field(max_length=60)
    product_type: ProductType = "Stock"
    costing_method: CostingMethod = "Average"
    stock_nominal_code: str = Field(default="1001", description="Nominal account of the stock asset")
    issue_nominal_code: str = Field(default="5000", description="Nominal account of cost of sales")


class Product(_Strict):
    sku: str = Field(max_length=30, description="Sage 200 product code")
    name: str = Field(max_length=60)
    group: str = Field(description="ProductGroup.code")
    unit_cost: Decimal = Field(ge=0, description="Standard cost, or average buying price, per Sage unit")
    selling_price: Decimal = Field(ge=0)
    wms_sku: str | None = Field(default=None, description="SKU in the WMS where it differs from Sage")
    wms_units_per_sage_unit: int = Field(
        default=1, ge=1, description="WMS eaches in one Sage unit (a UoM mismatch when > 1)"
    )
    abc_class: Literal["A", "B", "C"] = "C"
    barcode: str | None = None

    @property
    def wms_code(self) -> str:
        return self.wms_sku or self.sku


class Warehouse(_Strict):
    sage_name: str = Field(max_length=20)
    wms_warehouse_id: int = Field(ge=1)
    wms_name: str
    kind: Literal["own", "3pl"] = "own"


class CostLayer(_Strict):
    quantity: Decimal = Field(gt=0)
    unit_cost: Decimal = Field(ge=0)
    received: datetime


class OpeningStock(_Strict):
    sku: str
    warehouse: str = Field(description="Warehouse.sage_name")
    sage_confirmed: Decimal = Field(ge=0)
    sage_unconfirmed: Decimal = Field(default=Decimal(0), ge=0, description="Received, not invoiced")
    wms_on_hand: Decimal | None = Field(
        default=None, ge=0, description="WMS sellable level in WMS units; default mirrors Sage"
    )
    wms_quarantine: Decimal = Field(default=Decimal(0), ge=0)
    fifo_layers: list[CostLayer] = Field(default_factory=list, description="FIFO groups only")


class Customer(_Strict):
    account: str = Field(max_length=8)
    name: str = Field(max_length=60)
    address_1: str = ""
    town: str = ""
    postcode: str = ""
    country: str = "GB"
    email: str | None = None


class OrderLine(_Strict):
    line_type: LineType = "Standard"
    sku: str | None = Field(default=None, description="Sage product code; Standard lines only")
    warehouse: str | None = Field(default=None, description="Warehouse.sage_name; Standard lines only")
    quantity: Decimal = Field(default=Decimal(0), ge=0)
    unit_price: Decimal = Field(default=Decimal(0), ge=0)
    description: str = Field(default="", max_length=60)

    @model_validator(mode="after")
    def _standard_lines_name_a_product(self) -> OrderLine:
        if self.line_type == "Standard" and (not self.sku or not self.warehouse):
            raise ValueError("a Standard line needs sku and warehouse")
        if self.line_type == "Comment" and (self.quantity or self.unit_price):
            raise ValueError("a Comment line carries no quantity or price")
        return self


class WmsOrderState(_Strict):
    """Where an order already stands in the WMS when the scenario loads (for planted timing drift).

    OpeningStock is the position before these orders: the WMS simulator takes the despatched
    quantities off its level on load, while Sage still holds the order live and allocated.
    """

    status: WmsOrderStatus
    despatched_quantities: dict[int, Decimal] = Field(
        default_factory=dict, description="0-based Sage line index -> quantity despatched in the WMS"
    )


class SalesOrder(_Strict):
    document_no: str = Field(max_length=20)
    customer: str = Field(description="Customer.account")
    document_date: datetime
    status: OrderStatus = "Live"
    lines: list[OrderLine] = Field(min_length=1)
    courier_service: str = "Royal Mail 48"
    in_wms: WmsOrderState | None = None


class Receipt(_Strict):
    """Goods expected in (an ASN). booked_in_wms with posted_to_sage false is planted timing drift."""

    reference: str
    sku: str
    warehouse: str
    quantity: Decimal = Field(gt=0)
    unit_cost: Decimal = Field(ge=0)
    expected: datetime
    booked_in_wms: bool = False
    posted_to_sage: bool = False


class WarehouseBehaviour(_Strict):
    seed: int = 42
    clock_speed: Decimal = Field(default=Decimal(60), gt=0, description="Warehouse seconds per real second")
    hours_to_print: Decimal = Decimal("0.5")
    hours_to_pick: Decimal = Decimal("2")
    hours_to_pack: Decimal = Decimal("1")
    hours_to_despatch: Decimal = Decimal("1")
    short_pick_rate: Decimal = Field(default=Decimal("0.03"), ge=0, le=1)
    split_rate: Decimal = Field(default=Decimal("0.05"), ge=0, le=1)
    multi_parcel_rate: Decimal = Field(default=Decimal("0.05"), ge=0, le=1)
    cancel_after_print_rate: Decimal = Field(default=Decimal("0.01"), ge=0, le=1)
    return_rate: Decimal = Field(default=Decimal("0.10"), ge=0, le=1)
    return_grading: dict[Literal["restock", "quarantine", "scrap"], Decimal] = Field(
        default_factory=lambda: {
            "restock": Decimal("0.7"),
            "quarantine": Decimal("0.2"),
            "scrap": Decimal("0.1"),
        }
    )
    shrink_rate: Decimal = Field(default=Decimal("0.015"), ge=0, le=1)


class SageFaults(_Strict):
    lock_rate: Decimal = Field(default=Decimal(0), ge=0, le=1, description="Share of writes that meet a lock")
    lock_seconds: Decimal = Field(default=Decimal(5), ge=0)
    rate_429: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_5xx: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_504: Decimal = Field(default=Decimal(0), ge=0, le=1)
    slow_seconds: Decimal = Field(default=Decimal(0), ge=0)


class WmsFaults(_Strict):
    duplicate_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    out_of_order_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    late_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    malformed_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_429: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_5xx: Decimal = Field(default=Decimal(0), ge=0, le=1)


class Faults(_Strict):
    sage: SageFaults = Field(default_factory=SageFaults)
    wms: WmsFaults = Field(default_factory=WmsFaults)


class PlantedDrift(_Strict):
    kind: DriftKind
    sku: str
    warehouse: str
    quantity: Decimal = Field(description="Units, signed as WMS - Sage, in Sage units")
    detail: str = ""
    new_standard_cost: Decimal | None = None


class ExpectedVariance(_Strict):
    """Ground truth: for one SKU and warehouse, the variance the pipeline must find, by cause."""

    sku: str
    warehouse: str
    cause: VarianceCause
    quantity: Decimal = Field(description="WMS - Sage, in Sage units")


class SageSettings(_Strict):
    update_stock_on_despatch: bool = True
    allocate_stock_on_order_entry: bool = True
    company_name: str = "Demo Retail Ltd"
    site_name: str = "Demo Retail"


class Scenario(_Strict):
    name: str
    description: str = ""
    starts_at: datetime = Field(description="Simulated clock at load (UTC)")
    currency: Literal["GBP"] = "GBP"
    sage: SageSettings = Field(default_factory=SageSettings)
    product_groups: list[ProductGroup] = Field(min_length=1)
    products: list[Product]
    warehouses: list[Warehouse] = Field(min_length=1)
    opening_stock: list[OpeningStock] = Field(default_factory=list)
    customers: list[Customer] = Field(default_factory=list)
    orders: list[SalesOrder] = Field(default_factory=list)
    receipts: list[Receipt] = Field(default_factory=list)
    behaviour: WarehouseBehaviour = Field(default_factory=WarehouseBehaviour)
    faults: Faults = Field(default_factory=Faults)
    drift: list[PlantedDrift] = Field(default_factory=list)
    expected: list[ExpectedVariance] = Field(default_factory=list)

    def product(self, sku: str) -> Product:
        return self._products_by_sku()[sku]

    def _products_by_sku(self) -> dict[str, Product]:
        return {p.sku: p for p in self.products}
