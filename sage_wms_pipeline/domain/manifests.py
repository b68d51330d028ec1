"""WMS manifests from a Sage 200 sales order.

Only stock lines go to the WMS. Lines that name different warehouses make one manifest per
warehouse, numbered deterministically: the first warehouse (in line order) takes the Sage
document number, the next ``<document_no>-2`` and so on. Free-text, comment, charge and non-stock
lines (service/labour; miscellaneous unless the policy includes them) are kept as excluded lines
with a reason, so that manifest totals + excluded totals = the Sage order total, exactly.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sage_wms_pipeline.domain.policy import Policy

SageLineType = Literal[
    "EnumLineTypeStandard", "EnumLineTypeFreeText", "EnumLineTypeCharge", "EnumLineTypeComment"
]
SageProductType = Literal["Stock", "ServiceLabour", "Miscellaneous"]
PENNY = Decimal("0.01")


class ManifestError(ValueError):
    """The order cannot be turned into manifests; names the order, line and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SageOrderLine(_Model):
    """The fields of a Sage ``sop_order_line`` that a manifest needs (Sage names)."""

    id: int
    line_type: SageLineType
    code: str | None = Field(default=None, description="Product code (Standard lines)")
    product_type: SageProductType | None = Field(default=None, description="The product group's type")
    warehouse_name: str | None = None
    description: str = ""
    line_quantity: Decimal = Decimal(0)
    selling_unit_price: Decimal = Decimal(0)
    line_total_value: Decimal | None = Field(default=None, description="Net, 2 dp; computed when absent")

    def total(self) -> Decimal:
        if self.line_total_value is not None:
            return self.line_total_value
        return (self.line_quantity * self.selling_unit_price).quantize(PENNY, rounding=ROUND_HALF_UP)


class SageOrder(_Model):
    id: int
    document_no: str
    document_status: str = "EnumDocumentStatusLive"
    customer_account: str | None = None
    total_net_value: Decimal | None = Field(default=None, description="Sage header total; checked when given")
    lines: list[SageOrderLine]

    def total(self) -> Decimal:
        return (
            self.total_net_value
            if self.total_net_value is not None
            else sum((line.total() for line in self.lines), Decimal(0))
        )


class ManifestLine(_Model):
    sage_line_id: int
    sku: str
    wms_sku: str
    sage_quantity: Decimal
    quantity: Decimal = Field(description="WMS units")
    unit_price: Decimal = Field(description="Per WMS unit")
    line_total: Decimal


class Manifest(_Model):
    order_number: str
    sage_order_id: int
    sage_document_no: str
    part: int
    warehouse: str
    wms_warehouse_id: int
    lines: list[ManifestLine]

    @property
    def total(self) -> Decimal:
        return sum((line.line_total for line in self.lines), Decimal(0))


class ExcludedLine(_Model):
    sage_order_id: int
    sage_document_no: str
    sage_line_id: int
    line_type: SageLineType
    code: str | None
    description: str
    reason: str
    line_total: Decimal


class ManifestPlan(_Model):
    manifests: list[Manifest]
    excluded: list[ExcludedLine]
    order_total: Decimal


def _exclusion_reason(line: SageOrderLine, policy: Policy) -> str | None:
    if line.line_type == "EnumLineTypeComment":
        return "comment line"
    if line.line_type == "EnumLineTypeFreeText":
        return "free-text line: no stock item"
    if line.line_type == "EnumLineTypeCharge":
        return "additional charge"
    if line.product_type == "ServiceLabour":
        return "service/labour item: not stocked"
    if line.product_type == "Miscellaneous" and policy.manifest.miscellaneous_lines == "exclude":
        return "miscellaneous item: excluded by policy"
    return None


def part_number(document_no: str, part: int) -> str:
    return document_no if part == 1 else f"{document_no}-{part}"


def build_manifests(order: SageOrder, policy: Policy) -> ManifestPlan:
    """Split a Sage order into WMS manifests (one per warehouse) plus excluded lines; tie-out checked."""
    by_warehouse: dict[str, list[ManifestLine]] = {}
    excluded: list[ExcludedLine] = []
    for idx, line in enumerate(order.lines):
        where = f"order {order.document_no} lines[{idx}] (id {line.id})"
        reason = _exclusion_reason(line, policy)
        if reason is not None:
            excluded.append(
                ExcludedLine(
                    sage_order_id=order.id,
                    sage_document_no=order.document_no,
                    sage_line_id=line.id,
                    line_type=line.line_type,
                    code=line.code,
                    description=line.description,
                    reason=reason,
                    line_total=line.total(),
                )
            )
            continue
        if not line.code:
            raise ManifestError(f"{where}: code: a Standard line needs a product code")
        if not line.warehouse_name:
            raise ManifestError(f"{where}: warehouse_name: a Standard line needs a warehouse")
        if line.line_quantity <= 0:
            raise ManifestError(f"{where}: line_quantity: {line.line_quantity} is not a positive quantity")
        try:
            policy.wms_warehouse_id(line.warehouse_name)
        except KeyError:
            raise ManifestError(
                f"{where}: warehouse_name: {line.warehouse_name!r} has no WMS warehouse mapping"
            ) from None
        sku = policy.sku_for_sage(line.code)
        if sku is None:
            raise ManifestError(f"{where}: code: {line.code!r} has no WMS SKU mapping")
        factor = Decimal(sku.wms_units_per_sage_unit)
        by_warehouse.setdefault(line.warehouse_name, []).append(
            ManifestLine(
                sage_line_id=line.id,
                sku=line.code,
                wms_sku=sku.wms_sku,
                sage_quantity=line.line_quantity,
                quantity=line.line_quantity * factor,
                # The WMS price is informational; the line total keeps Sage's exact value.
                unit_price=line.selling_unit_price / factor,
                line_total=line.total(),
            )
        )
    manifests = [
        Manifest(
            order_number=part_number(order.document_no, part),
            sage_order_id=order.id,
            sage_document_no=order.document_no,
            part=part,
            warehouse=warehouse,
            wms_warehouse_id=policy.wms_warehouse_id(warehouse),
            lines=lines,
        )
        for part, (warehouse, lines) in enumerate(by_warehouse.items(), start=1)
    ]
    plan = ManifestPlan(manifests=manifests, excluded=excluded, order_total=order.total())
    check_tie_out(plan)
    return plan


def check_tie_out(plan: ManifestPlan) -> None:
    """manifest totals + excluded totals must equal the Sage order total, to the penny and beyond."""
    shipped = sum((m.total for m in plan.manifests), Decimal(0))
    left_out = sum((e.line_total for e in plan.excluded), Decimal(0))
    if shipped + left_out != plan.order_total:
        rows = [*plan.manifests, *plan.excluded]
        doc = rows[0].sage_document_no if rows else "?"
        raise ManifestError(
            f"order {doc}: total_net_value: manifests {shipped} + excluded {left_out} "
            f"= {shipped + left_out}, Sage order total is {plan.order_total}"
        )


def parse_order_number(order_number: str) -> tuple[str, int]:
    """`SO0001003-2` -> ("SO0001003", 2); `SO0001003` -> ("SO0001003", 1)."""
    head, sep, tail = order_number.rpartition("-")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    return order_number, 1
