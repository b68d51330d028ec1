"""The readable resources: their typed fields (what `$filter`/`$orderby` may name) and JSON shape."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sage_wms_pipeline.simulators.sage200.odata import FieldType
from sage_wms_pipeline.simulators.sage200.store import dec, money

DT_FIELDS: dict[str, FieldType] = {"date_time_created": "dt", "date_time_updated": "dt"}
LINE_TYPE_IDS = {
    "EnumLineTypeStandard": 0,
    "EnumLineTypeFreeText": 1,
    "EnumLineTypeCharge": 2,
    "EnumLineTypeComment": 3,
}


def convert(value: Any, ftype: FieldType) -> Any:
    if value is None:
        return None
    if ftype == "dec":
        return Decimal(value)
    if ftype == "bool":
        return bool(value)
    if ftype == "int":
        return int(value)
    return value


@dataclass(frozen=True)
class Resource:
    name: str
    table: str
    fields: Mapping[str, FieldType]
    default_order: str = '"id" ASC'
    expandable: tuple[str, ...] = ()
    extras: Callable[[sqlite3.Row], dict[str, Any]] | None = None
    base_where: str = ""
    extra_select: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self, row: sqlite3.Row) -> dict[str, Any]:
        out = {name: convert(row[name], ftype) for name, ftype in self.fields.items()}
        if self.extras is not None:
            out.update(self.extras(row))
        return out


PRODUCT_GROUP = Resource(
    "product_groups",
    "product_groups",
    {
        "id": "int",
        "code": "str",
        "description": "str",
        "product_type": "str",
        "costing_method": "str",
        "can_levels_go_negative": "bool",
        "stock_nominal_code_id": "int",
        "issue_nominal_code_id": "int",
        **DT_FIELDS,
    },
    extras=lambda r: {
        "keep_movement_history": True,
        "do_items_use_units": False,
        "this_is_the_sop_product_group": False,
        "traceable_type": "EnumTraceableTypeNone",
    },
)

PRODUCT = Resource(
    "products",
    "products",
    {
        "id": "int",
        "code": "str",
        "name": "str",
        "description": "str",
        "barcode": "str",
        "allow_sales_order": "bool",
        "product_group_id": "int",
        "product_status_type": "str",
        "standard_cost": "dec",
        "average_buying_price": "dec",
        "free_stock_quantity": "dec",
        "stock_nominal_code_id": "int",
        "issue_nominal_code_id": "int",
        **DT_FIELDS,
    },
    extras=lambda r: {"traceable_type": "EnumTraceableTypeNone", "fulfilment_method_type": "FromStock"},
)

WAREHOUSE = Resource(
    "warehouses",
    "warehouses",
    {
        "id": "int",
        "name": "str",
        "description": "str",
        "warehouse_type": "str",
        "use_for_sales_trading": "bool",
        **DT_FIELDS,
    },
)

_HOLDING_QTY = (
    "reorder_level",
    "minimum_level",
    "maximum_level",
    "confirmed_qty_in_stock",
    "unconfirmed_qty_in_stock",
    "quantity_in_stock",
    "quantity_reserved",
    "quantity_in_stock_less_reserved",
    "quantity_on_order",
    "quantity_allocated_stock",
    "quantity_allocated_sop",
    "quantity_allocated_bom",
    "quantity_allocated",
    "free_stock_available",
    "free_stock_available_less_reserved",
)
WAREHOUSE_HOLDING = Resource(
    "warehouse_holdings",
    "warehouse_holdings",
    {
        "id": "int",
        "warehouse_id": "int",
        "product_id": "int",
        "warehouse_name": "str",
        **dict.fromkeys(_HOLDING_QTY, "dec"),
        **DT_FIELDS,
    },
    extras=lambda r: {"is_default_manufacturing_warehouse": False, "bin_holdings": []},
)

CUSTOMER = Resource(
    "customers",
    "customers",
    {
        "id": "int",
        "reference": "str",
        "name": "str",
        "address_1": "str",
        "city": "str",
        "postcode": "str",
        "country_code": "str",
        "email": "str",
        **DT_FIELDS,
    },
)

_ORDER_MONEY = (
    "exchange_rate",
    "subtotal_goods_value",
    "subtotal_charge_net_value",
    "subtotal_charge_tax_value",
    "subtotal_discount_value",
    "total_net_value",
    "total_tax_value",
    "total_gross_value",
)


def _order_extras(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "currency_id": 1,
        "customer": {
            "id": row["customer_id"],
            "reference": row["customer_reference"],
            "name": row["customer_name"],
        },
        "delivery_address": {
            "postal_name": row["customer_name"],
            "address_1": row["c_address_1"],
            "city": row["c_city"],
            "postcode": row["c_postcode"],
            "country": row["c_country_code"],
            "email": row["c_email"],
        },
        "memos": [],
    }


SOP_ORDER = Resource(
    "sop_orders",
    "sop_orders_v",
    {
        "id": "int",
        "document_no": "str",
        "customer_id": "int",
        "customer_document_no": "str",
        "document_date": "dt",
        "document_status": "str",
        "despatch_receipt_status": "str",
        "invoice_credit_status": "str",
        "cancelled_status": "str",
        "is_draft": "bool",
        **dict.fromkeys(_ORDER_MONEY, "dec"),
        "requested_delivery_date": "dt",
        "promised_delivery_date": "dt",
        "document_created_by": "str",
        "is_editing": "bool",
        "analysis_code_1": "str",
        **DT_FIELDS,
    },
    expandable=("lines", "is_to_lock", "customer"),
    extras=_order_extras,
)

_LINE_QTY = (
    "line_quantity",
    "allocated_quantity",
    "despatch_receipt_quantity",
    "invoice_credit_quantity",
    "posted_invoice_credit_quantity",
    "selling_unit_price",
    "unit_discount_percent",
    "unit_discount_value",
    "cost_price",
    "line_total_value",
    "line_tax_value",
)


def _line_extras(row: sqlite3.Row) -> dict[str, Any]:
    qty, alloc, done = (
        dec(row["line_quantity"]),
        dec(row["allocated_quantity"]),
        dec(row["despatch_receipt_quantity"]),
    )
    to_allocate = max(Decimal(0), qty - done - alloc) if row["counts_stock"] else Decimal(0)
    price = dec(row["selling_unit_price"]) - dec(row["unit_discount_value"])
    return {
        "available_for_despatch": alloc,
        "to_allocate_quantity": to_allocate,
        "discounted_unit_price": money(price),
        "stock_unit_line_quantity": qty,
        "stock_unit_allocated_quantity": alloc,
        "stock_unit_to_allocate_quantity": to_allocate,
        "stock_unit_available_for_despatch": alloc,
        "stock_unit_despatch_receipt_quantity": done,
        "stock_unit_invoice_credit_quantity": dec(row["invoice_credit_quantity"]),
        "selling_unit_description": "Each" if row["line_type"] != "EnumLineTypeComment" else "",
        "is_line_deletable": done == 0,
    }


SOP_ORDER_LINE = Resource(
    "sop_order_lines",
    "sop_order_lines",
    {
        "id": "int",
        "sop_order_id": "int",
        "line_number": "int",
        "line_type": "str",
        "product_id": "int",
        "warehouse_id": "int",
        "code": "str",
        "description": "str",
        **dict.fromkeys(_LINE_QTY, "dec"),
        "tax_code_id": "int",
        "allocation_status": "str",
        "despatch_receipt_status": "str",
        "invoice_credit_status": "str",
        "confirmation_intent_type": "str",
        "show_on_customer_docs": "bool",
        "show_on_picking_list_type": "str",
        "is_complete": "bool",
        **DT_FIELDS,
    },
    default_order='"line_number" ASC, "id" ASC',
    extras=_line_extras,
)

SOP_DESPATCH_RECEIPT = Resource(
    "sop_despatch_receipts",
    "sop_despatch_receipts",
    {
        "id": "int",
        "despatch_no": "str",
        "despatched_by": "str",
        "despatch_date": "dt",
        "sop_order_id": "int",
        "courier_id": "int",
        "courier_name": "str",
        "consignment_no": "str",
        "weight": "dec",
        "pieces": "int",
        "notes": "str",
        **DT_FIELDS,
    },
)

SOP_ORDER_DESPATCH_LINE_VIEW = Resource(
    "sop_order_despatch_line_views",
    "sop_order_despatch_line_views",
    {
        "sop_despatch_line_id": "int",
        "sop_despatch_line_quantity": "dec",
        "sop_despatch_line_is_invoiced": "bool",
        "sop_despatch_id": "int",
        "sop_despatch_document_no": "str",
        "sop_despatch_date": "dt",
        "sop_despatch_user_name": "str",
        "sop_order_line_id": "int",
        "sop_order_line_item_code": "str",
        "sop_order_line_item_description": "str",
        "sop_order_line_print_sequence_number": "int",
        "sop_order_line_quantity": "dec",
        "sop_order_line_despatch_quantity": "dec",
        "sop_order_id": "int",
        "sop_order_document_no": "str",
        "sop_order_document_date": "dt",
        "sop_order_document_status_type": "str",
        "sop_order_customer_document_no": "str",
        "customer_id": "int",
        "customer_reference": "str",
        "customer_name": "str",
        "product_id": "int",
        "product_code": "str",
        "product_name": "str",
        "warehouse_holding_id": "int",
        "warehouse_id": "int",
        "warehouse_name": "str",
        "sop_despatch_courier_name": "str",
        "sop_despatch_consignment_no": "str",
        "sop_despatch_pieces": "int",
        "sop_despatch_weight": "dec",
        "sop_despatch_notes": "str",
        "date_time_updated": "dt",
    },
    default_order='"sop_despatch_line_id" ASC',
    extras=lambda r: {"sop_order_line_type_id": LINE_TYPE_IDS.get(r["line_type"], 0)},
)

PRODUCT_TRANSACTION_VIEW = Resource(
    "product_transaction_views",
    "product_transaction_views",
    {
        "id": "int",
        "product_id": "int",
        "product_group_id": "int",
        "product_code": "str",
        "product_group_code": "str",
        "transaction_group_id": "int",
        "transaction_type_id": "int",
        "transaction_type": "str",
        "transaction_date": "dt",
        "source_area_type_id": "int",
        "source_area_reference": "str",
        "source_area_name": "str",
        "reference": "str",
        "second_reference": "str",
        "warehouse_name": "str",
        "bin_name": "str",
        "quantity": "dec",
        "unit_cost_price": "dec",
        "unit_issue_price": "dec",
        "cost_value": "dec",
        "issue_value": "dec",
        "memo": "str",
        "user_name": "str",
        "date_time_updated": "dt",
    },
    default_order='"id" DESC',  # Sage documents id descending as this resource's default sort
)

STOCKTAKE = Resource(
    "stocktakes",
    "stocktakes",
    {
        "id": "int",
        "stocktake_name": "str",
        "warehouse_id": "int",
        "stocktake_date": "dt",
        "stocktake_type": "str",
        "stocktake_status": "str",
        "show_expected_quantities": "bool",
        "nominal_narrative": "str",
        **DT_FIELDS,
    },
)

SOP_RETURN = Resource(
    "sop_returns",
    "sop_returns",
    {
        "id": "int",
        "document_no": "str",
        "customer_id": "int",
        "customer_document_no": "str",
        "document_date": "dt",
        "document_status": "str",
        "total_net_value": "dec",
        "total_tax_value": "dec",
        "total_gross_value": "dec",
        **DT_FIELDS,
    },
    expandable=("lines",),
)

SOP_RETURN_LINE = Resource(
    "sop_return_lines",
    "sop_return_lines",
    {
        "id": "int",
        "sop_return_id": "int",
        "line_number": "int",
        "line_type": "str",
        "product_id": "int",
        "warehouse_id": "int",
        "code": "str",
        "description": "str",
        "line_quantity": "dec",
        "selling_unit_price": "dec",
        "line_total_value": "dec",
        "restock": "bool",
        "despatch_receipt_quantity": "dec",
        **DT_FIELDS,
    },
    default_order='"line_number" ASC',
)

LISTABLE: dict[str, Resource] = {
    r.name: r
    for r in (
        PRODUCT_GROUP,
        PRODUCT,
        WAREHOUSE,
        WAREHOUSE_HOLDING,
        CUSTOMER,
        SOP_ORDER,
        SOP_DESPATCH_RECEIPT,
        SOP_ORDER_DESPATCH_LINE_VIEW,
        PRODUCT_TRANSACTION_VIEW,
        STOCKTAKE,
        SOP_RETURN,
    )
}
