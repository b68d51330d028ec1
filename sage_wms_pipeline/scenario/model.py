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

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

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
    """A Sage product group: every product in it shares the product type and the costing method."""

    code: str = Field(max_length=20, description="Sage product group code; products name it in `group`")
    name: str = Field(max_length=60)
    product_type: ProductType = Field(
        default="Stock",
        description="Stock items hold stock in warehouses; ServiceLabour and Miscellaneous items never do",
    )
    costing_method: CostingMethod = Field(
        default="Average",
        description="How Sage values stock: FIFO (cost layers, see OpeningStock.fifo_layers), "
        "Average (average buying price = unit_cost) or Standard (standard cost = unit_cost)",
    )
    stock_nominal_code: str = Field(default="1001", description="Nominal account of the stock asset")
    issue_nominal_code: str = Field(default="5000", description="Nominal account of cost of sales")


class Product(_Strict):
    """One Sage product and how it is known in the WMS."""

    sku: str = Field(max_length=30, description="Sage 200 product code")
    name: str = Field(max_length=60)
    group: str = Field(description="ProductGroup.code")
    unit_cost: Decimal = Field(ge=0, description="Standard cost, or average buying price, per Sage unit")
    selling_price: Decimal = Field(ge=0)
    wms_sku: str | None = Field(default=None, description="SKU in the WMS where it differs from Sage")
    wms_units_per_sage_unit: int = Field(
        default=1, ge=1, description="WMS eaches in one Sage unit (a UoM mismatch when > 1)"
    )
    abc_class: Literal["A", "B", "C"] = Field(
        default="C", description="Value class: A ~ top 80% of stock value, B the next 15%, C the rest"
    )
    barcode: str | None = Field(default=None, description="EAN-13, informational")

    @property
    def wms_code(self) -> str:
        return self.wms_sku or self.sku


class Warehouse(_Strict):
    """A warehouse as Sage names it and as the WMS numbers it."""

    sage_name: str = Field(max_length=20, description="Sage warehouse name; rows elsewhere name it")
    wms_warehouse_id: int = Field(ge=1, description="WarehouseId in the WMS")
    wms_name: str = Field(description="Warehouse name shown by the WMS")
    kind: Literal["own", "3pl"] = Field(default="own", description="Own site or third-party logistics")


class CostLayer(_Strict):
    """One FIFO cost layer: a quantity still on hand from one receipt, at that receipt's cost."""

    quantity: Decimal = Field(gt=0, description="Sage units")
    unit_cost: Decimal = Field(ge=0, description="GBP per Sage unit")
    received: datetime = Field(description="When the layer was received; oldest is issued first")


class OpeningStock(_Strict):
    """Stock of one SKU in one warehouse on both sides, before the scenario's orders and receipts.

    Simulators apply `SalesOrder.in_wms` despatches and booked/posted `Receipt`s on top of it.
    """

    sku: str = Field(description="Product.sku (a Stock item)")
    warehouse: str = Field(description="Warehouse.sage_name")
    sage_confirmed: Decimal = Field(ge=0, description="Sage confirmed quantity in stock, Sage units")
    sage_unconfirmed: Decimal = Field(
        default=Decimal(0), ge=0, description="Received, not invoiced (Sage units); part of quantity in stock"
    )
    wms_on_hand: Decimal | None = Field(
        default=None,
        ge=0,
        description="WMS sellable level in WMS units, quarantine excluded; "
        "default (sage_confirmed + sage_unconfirmed) * wms_units_per_sage_unit",
    )
    wms_quarantine: Decimal = Field(
        default=Decimal(0), ge=0, description="WMS units in quarantine (not sellable, not in Sage)"
    )
    fifo_layers: list[CostLayer] = Field(
        default_factory=list,
        description="FIFO groups only, and then required: layer quantities sum to sage_confirmed",
    )


class Customer(_Strict):
    """A Sage customer account; orders name it."""

    account: str = Field(max_length=8)
    name: str = Field(max_length=60)
    address_1: str = ""
    town: str = ""
    postcode: str = ""
    country: str = "GB"
    email: str | None = None


class OrderLine(_Strict):
    """A Sage order line. Standard lines name a product; Charge, FreeText and Comment lines do not."""

    line_type: LineType = "Standard"
    sku: str | None = Field(default=None, description="Sage product code; Standard lines only")
    warehouse: str | None = Field(default=None, description="Warehouse.sage_name; Standard lines only")
    quantity: Decimal = Field(default=Decimal(0), ge=0, description="Sage units")
    unit_price: Decimal = Field(default=Decimal(0), ge=0, description="GBP per Sage unit, net of VAT")
    description: str = Field(default="", max_length=60, description="Text of FreeText, Charge, Comment lines")

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
    """A Sage sales order. Only orders with `in_wms` exist in the WMS at load; the pipeline sends the rest."""

    document_no: str = Field(max_length=20, description="Sage order number, unique")
    customer: str = Field(description="Customer.account")
    document_date: datetime
    status: OrderStatus = Field(default="Live", description="Sage status; Live orders are allocated at load")
    lines: list[OrderLine] = Field(min_length=1)
    courier_service: str = "Royal Mail 48"
    in_wms: WmsOrderState | None = Field(
        default=None, description="Where the order already stands in the WMS (planted timing drift)"
    )


class Receipt(_Strict):
    """Goods expected in (an ASN). booked_in_wms with posted_to_sage false is planted timing drift.

    OpeningStock is the position before receipts (as it is before `SalesOrder.in_wms` despatches):
    on load the WMS simulator adds a booked_in_wms receipt to its level (quantity *
    wms_units_per_sage_unit) and the Sage simulator adds a posted_to_sage receipt to its quantity
    in stock (a goods-in movement at unit_cost). See docs/scenarios.md.
    """

    reference: str = Field(description="ASN / goods-received reference, unique")
    sku: str = Field(description="Product.sku (a Stock item)")
    warehouse: str = Field(description="Warehouse.sage_name")
    quantity: Decimal = Field(gt=0, description="Sage units")
    unit_cost: Decimal = Field(ge=0, description="GBP per Sage unit")
    expected: datetime = Field(description="When the goods are (or were) due")
    booked_in_wms: bool = Field(default=False, description="Already booked in at the WMS at load")
    posted_to_sage: bool = Field(default=False, description="Already recorded in Sage at load")


class WarehouseBehaviour(_Strict):
    """How the simulated warehouse works orders once the pipeline has sent them (rates are shares)."""

    seed: int = Field(default=42, description="Seeds every random draw of the living warehouse")
    clock_speed: Decimal = Field(default=Decimal(60), gt=0, description="Warehouse seconds per real second")
    hours_to_print: Decimal = Field(default=Decimal("0.5"), description="Warehouse hours from NEW to PRINTED")
    hours_to_pick: Decimal = Field(default=Decimal("2"), description="Warehouse hours from PRINTED to PICKED")
    hours_to_pack: Decimal = Field(default=Decimal("1"), description="Warehouse hours from PICKED to packed")
    hours_to_despatch: Decimal = Field(default=Decimal("1"), description="Hours from packed to DESPATCHED")
    short_pick_rate: Decimal = Field(
        default=Decimal("0.03"), ge=0, le=1, description="Share of orders short-picked (ONBACKORDER)"
    )
    split_rate: Decimal = Field(default=Decimal("0.05"), ge=0, le=1, description="Share despatched in parts")
    multi_parcel_rate: Decimal = Field(
        default=Decimal("0.05"), ge=0, le=1, description="Share despatched in several parcels"
    )
    cancel_after_print_rate: Decimal = Field(
        default=Decimal("0.01"), ge=0, le=1, description="Share cancelled after printing"
    )
    return_rate: Decimal = Field(
        default=Decimal("0.10"), ge=0, le=1, description="Share of despatched lines returned (retail: 8-12%)"
    )
    return_grading: dict[Literal["restock", "quarantine", "scrap"], Decimal] = Field(
        default_factory=lambda: {
            "restock": Decimal("0.7"),
            "quarantine": Decimal("0.2"),
            "scrap": Decimal("0.1"),
        },
        description="How returns are graded: shares summing to 1",
    )
    shrink_rate: Decimal = Field(
        default=Decimal("0.015"), ge=0, le=1, description="Stock lost to scrap and miscounts, share of sales"
    )


class SageFaults(_Strict):
    """Sage 200 simulator faults: record locks, throttling, server errors, slow answers."""

    lock_rate: Decimal = Field(default=Decimal(0), ge=0, le=1, description="Share of writes that meet a lock")
    lock_seconds: Decimal = Field(default=Decimal(5), ge=0)
    rate_429: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_5xx: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_504: Decimal = Field(default=Decimal(0), ge=0, le=1)
    slow_seconds: Decimal = Field(default=Decimal(0), ge=0)


class WmsFaults(_Strict):
    """WMS simulator faults in event delivery and HTTP answers."""

    duplicate_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    out_of_order_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    late_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    malformed_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_429: Decimal = Field(default=Decimal(0), ge=0, le=1)
    rate_5xx: Decimal = Field(default=Decimal(0), ge=0, le=1)


class Faults(_Strict):
    """Fault injection in the simulators; all off by default."""

    sage: SageFaults = Field(default_factory=SageFaults)
    wms: WmsFaults = Field(default_factory=WmsFaults)


class PlantedDrift(_Strict):
    """One planted difference and how it was made (see docs/scenarios.md for each kind)."""

    kind: DriftKind
    sku: str = Field(description="Product.sku")
    warehouse: str = Field(description="Warehouse.sage_name")
    quantity: Decimal = Field(description="Units, signed as WMS - Sage, in Sage units")
    detail: str = ""
    new_standard_cost: Decimal | None = Field(
        default=None,
        ge=0,
        description="standard_cost_change only: the standard cost now (= Product.unit_cost)",
    )
    cause: VarianceCause | None = Field(
        default=None, description="Which cause the difference is classified under (ExpectedVariance.cause)"
    )
    reference: str | None = Field(
        default=None, description="The order document_no or receipt reference that realises it, if any"
    )
    previous_standard_cost: Decimal | None = Field(
        default=None, ge=0, description="standard_cost_change only: the standard cost before `effective`"
    )
    effective: datetime | None = Field(
        default=None, description="standard_cost_change only: when the new standard cost took effect"
    )


class ExpectedVariance(_Strict):
    """Ground truth: for one SKU and warehouse, the variance the pipeline must find, by cause."""

    sku: str = Field(description="Product.sku")
    warehouse: str = Field(description="Warehouse.sage_name")
    cause: VarianceCause = Field(description="timing, status, mapping or unexplained (docs/scenarios.md)")
    quantity: Decimal = Field(description="WMS - Sage, in Sage units")


class SageSettings(_Strict):
    """Sage SOP settings that change how orders move stock."""

    update_stock_on_despatch: bool = Field(
        default=True, description="Stock leaves at despatch (true) or at invoice posting (false)"
    )
    allocate_stock_on_order_entry: bool = Field(default=True, description="Live orders allocate on entry")
    company_name: str = "Demo Retail Ltd"
    site_name: str = "Demo Retail"


class Scenario(_Strict):
    """One retailer's data for both simulators, with planted drift and its ground truth."""

    name: str = Field(description="Short name, shown by the simulators")
    description: str = ""
    starts_at: datetime = Field(description="Simulated clock at load (UTC); the cut-off for planted drift")
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
    drift: list[PlantedDrift] = Field(default_factory=list, description="Planted differences, how made")
    expected: list[ExpectedVariance] = Field(
        default_factory=list, description="Ground truth per SKU, warehouse and cause (docs/scenarios.md)"
    )

    @model_validator(mode="after")
    def _cross_references_hold(self, info: ValidationInfo) -> Scenario:
        # Rows must refer to each other consistently; sage_wms_pipeline.scenario.io lists the problems
        # row by row and asks to skip this pass (context skip_cross_checks) to report them itself.
        if info.context and info.context.get("skip_cross_checks"):
            return self
        from sage_wms_pipeline.scenario.checks import scenario_problems

        problems = scenario_problems(self)
        if problems:
            more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(f"{len(problems)} problem(s):\n" + "\n".join(problems[:20]) + more)
        return self

    def rebased(self, starts_at: datetime) -> Scenario:
        """The same scenario moved in time so it starts at `starts_at`: every timestamp shifts alike.

        The demo loads the scenario rebased to "now", so the warehouse clock, the Sage simulator's
        wall-clock stamps and the pipeline's own clock are one clock, and times taken on one side
        (a WMS despatch) can be compared with times taken on the other (its Sage posting).
        """
        shift = starts_at - self.starts_at

        def moved(value: object) -> object:
            if isinstance(value, datetime):
                return value + shift
            if isinstance(value, dict):
                return {k: moved(v) for k, v in value.items()}
            if isinstance(value, list):
                return [moved(v) for v in value]
            return value

        return Scenario.model_validate(moved(self.model_dump(mode="python")))

    def product(self, sku: str) -> Product:
        return self._products_by_sku()[sku]

    def _products_by_sku(self) -> dict[str, Product]:
        return {p.sku: p for p in self.products}
