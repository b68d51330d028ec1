from __future__ import annotations

from decimal import Decimal

import pytest

from sage_wms_pipeline.domain.manifests import (
    ManifestError,
    SageOrder,
    build_manifests,
    parse_order_number,
)
from sage_wms_pipeline.domain.policy import Policy, load_policy

POLICY = load_policy()


def _order(lines: list[dict], **kw: object) -> SageOrder:
    return SageOrder.model_validate({"id": 1003, "document_no": "SO0001003", "lines": lines, **kw})


def _std(i: int, code: str, wh: str, qty: str, price: str, ptype: str = "Stock") -> dict:
    return {
        "id": i,
        "line_type": "EnumLineTypeStandard",
        "code": code,
        "product_type": ptype,
        "warehouse_name": wh,
        "line_quantity": qty,
        "selling_unit_price": price,
    }


LINES = [
    _std(1, "CANDLE-FIG", "BRISTOL", "12", "14.40"),
    _std(2, "GIFTBOX-S", "LEEDS", "12", "3.60"),
    {
        "id": 3,
        "line_type": "EnumLineTypeFreeText",
        "description": "Custom ribbon",
        "line_quantity": "12",
        "selling_unit_price": "0.50",
    },
    _std(4, "GIFTWRAP", "BRISTOL", "12", "3.50", "ServiceLabour"),
    {
        "id": 5,
        "line_type": "EnumLineTypeCharge",
        "description": "Carriage",
        "line_quantity": "1",
        "selling_unit_price": "6.95",
    },
    {"id": 6, "line_type": "EnumLineTypeComment", "description": "Leave at rear"},
    _std(7, "TISSUE", "BRISTOL", "1", "0.333", "Miscellaneous"),
    _std(8, "CARD-XMAS-6", "BRISTOL", "2", "6.50"),
]


def test_split_by_warehouse_with_excluded_lines_and_exact_tie_out() -> None:
    plan = build_manifests(_order(LINES), POLICY)
    assert [(m.order_number, m.warehouse, m.wms_warehouse_id) for m in plan.manifests] == [
        ("SO0001003", "BRISTOL", 2),
        ("SO0001003-2", "LEEDS", 1),
    ]
    bristol = plan.manifests[0]
    assert [(line.wms_sku, line.quantity) for line in bristol.lines] == [
        ("CNDL-FIG-200", Decimal("12")),
        ("CARD-XMAS-6", Decimal("12")),
    ]  # 2 packs = 12 eaches
    assert {e.sage_line_id: e.reason for e in plan.excluded} == {
        3: "free-text line: no stock item",
        4: "service/labour item: not stocked",
        5: "additional charge",
        6: "comment line",
        7: "miscellaneous item: excluded by policy",
    }
    shipped = sum((m.total for m in plan.manifests), Decimal(0))
    assert shipped == Decimal("172.80") + Decimal("43.20") + Decimal("13.00")
    assert shipped + sum((e.line_total for e in plan.excluded), Decimal(0)) == plan.order_total


def test_miscellaneous_included_when_policy_says_so() -> None:
    policy = Policy.model_validate({**POLICY.model_dump(), "manifest": {"miscellaneous_lines": "include"}})
    plan = build_manifests(_order(LINES), policy)
    assert "TISSUE" in [line.sku for m in plan.manifests for line in m.lines]


def test_header_total_that_does_not_tie_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"SO0001003: total_net_value"):
        build_manifests(_order(LINES[:2], total_net_value="216.01"), POLICY)
    assert build_manifests(_order(LINES[:2], total_net_value="216.00"), POLICY).order_total == Decimal(
        "216.00"
    )


def test_unmapped_warehouse_and_bad_quantity_name_the_line() -> None:
    with pytest.raises(ManifestError, match=r"lines\[0\] \(id 1\): warehouse_name: 'HULL'"):
        build_manifests(_order([_std(1, "MUG", "HULL", "1", "1")]), POLICY)
    with pytest.raises(ManifestError, match=r"lines\[0\] \(id 1\): line_quantity"):
        build_manifests(_order([_std(1, "MUG", "LEEDS", "0", "1")]), POLICY)


def test_order_numbers_parse_back() -> None:
    assert parse_order_number("SO0001003-2") == ("SO0001003", 2)
    assert parse_order_number("SO0001003") == ("SO0001003", 1)
