"""Scenario files: exact reading and writing, and refusals that name the field and the row."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from sage_wms_pipeline import jsonutil, settings
from sage_wms_pipeline.scenario.io import (
    ScenarioError,
    read_scenario,
    scenario_json_schema,
    validate_data,
    write_scenario,
)
from sage_wms_pipeline.scenario.model import Scenario

SCHEMA_FILE = settings.PROJECT_ROOT / "data" / "scenario.schema.json"


@pytest.fixture
def demo() -> dict[str, Any]:
    return jsonutil.loads(settings.demo_scenario_path().read_text())


def write_json(tmp_path: Path, data: dict[str, Any], name: str = "s.json") -> Path:
    path = tmp_path / name
    path.write_text(jsonutil.dumps(data))
    return path


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        validate_data(data, "test")
    return info.value.problems


def test_demo_reads_with_exact_decimals() -> None:
    s = read_scenario(settings.demo_scenario_path())
    assert s.product("TSHIRT-BLK-M").unit_cost == Decimal("4.20")
    assert isinstance(s.opening_stock[0].fifo_layers[0].unit_cost, Decimal)
    assert [o.document_no for o in s.orders] == [f"SO000100{i}" for i in range(1, 10)] + ["SO0001010"]


def test_json_and_yaml_round_trip_exactly(tmp_path: Path) -> None:
    s = read_scenario(settings.demo_scenario_path())
    s.products[0].unit_cost = Decimal("0.30000000000000004441")  # more digits than a float keeps
    for name in ("out.json", "out.yaml"):
        write_scenario(s, tmp_path / name)
        back = read_scenario(tmp_path / name)
        assert back.products[0].unit_cost == Decimal("0.30000000000000004441")
        assert back.model_dump() == s.model_dump()


def test_yaml_numbers_are_decimal_not_float(tmp_path: Path) -> None:
    s = read_scenario(settings.demo_scenario_path())
    write_scenario(s, tmp_path / "s.yml")
    text = (tmp_path / "s.yml").read_text()
    assert "unit_cost: 4.20" in text  # written as a plain number with its digits
    text = text.replace("unit_cost: 4.20", "unit_cost: 0.1", 1)
    (tmp_path / "s.yml").write_text(text)
    assert read_scenario(tmp_path / "s.yml").products[0].unit_cost == Decimal("0.1")


def test_unknown_sku_on_an_order_line_names_field_and_order(demo: dict[str, Any], tmp_path: Path) -> None:
    demo["orders"][2]["lines"][1]["sku"] = "ABC"
    with pytest.raises(ScenarioError) as info:
        read_scenario(write_json(tmp_path, demo))
    assert "orders[2].lines[1].sku: unknown SKU 'ABC' (order SO0001003)" in str(info.value)


def test_several_problems_are_listed_at_once(demo: dict[str, Any]) -> None:
    demo["products"][3]["group"] = "NOPE"
    demo["orders"][0]["customer"] = "NOBODY"
    demo["orders"][5]["lines"][1]["warehouse"] = "PARIS"
    demo["opening_stock"][0]["fifo_layers"][0]["quantity"] = 70
    demo["customers"].append(dict(demo["customers"][0]))
    problems = problems_of(demo)
    assert "products[3].group: unknown product group 'NOPE' (product MUG-STONE)" in problems
    assert "orders[0].customer: unknown customer 'NOBODY' (order SO0001001)" in problems
    assert "orders[5].lines[1].warehouse: unknown warehouse 'PARIS' (order SO0001006)" in problems
    assert (
        "opening_stock[0].fifo_layers: FIFO layers sum to 142, not sage_confirmed 144 "
        "(stock TSHIRT-BLK-M at LEEDS, group APPAREL is FIFO)" in problems
    )
    assert "customers[4].account: duplicate customer account 'WEB001' (first at customers[0])" in problems
    assert len(problems) == 5


def test_field_errors_name_the_field_and_the_row(demo: dict[str, Any]) -> None:
    demo["opening_stock"][9]["sage_confirmed"] = -1
    demo["orders"][1]["lines"][0]["quantity"] = "lots"
    del demo["products"][0]["name"]
    problems = problems_of(demo)
    assert any(
        p.startswith("opening_stock[9].sage_confirmed: Input should be greater than or equal to 0 (got ")
        and p.endswith("(stock MUG-STONE at LEEDS)")
        for p in problems
    ), problems
    assert any(p.startswith("orders[1].lines[0].quantity:") and "(order SO0001002)" in p for p in problems)
    assert "products[0].name: Field required (product TSHIRT-BLK-M)" in problems


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["orders"].append(copy.deepcopy(d["orders"][0])),
            "orders[10].document_no: duplicate order number 'SO0001001' (first at orders[0])",
        ),
        (
            lambda d: d["warehouses"][2].update(wms_warehouse_id=1),
            "warehouses[2].wms_warehouse_id: duplicate 1 (first at warehouses[0])",
        ),
        (
            lambda d: d["products"][1].update(wms_sku="CNDL-FIG-200"),
            "products[1].wms_sku: WMS SKU 'CNDL-FIG-200' is used by another product (product TSHIRT-WHT-L)",
        ),
        (
            lambda d: (
                d["orders"][6]["lines"][0].update(warehouse="3PL-MK", sku="GIFTBOX-S")
                or d["opening_stock"].pop(20)
            ),
            "orders[6].lines[0].warehouse: SKU 'GIFTBOX-S' has no opening_stock row in warehouse '3PL-MK' "
            "(order SO0001007)",
        ),
        (
            lambda d: d["orders"][7]["in_wms"]["despatched_quantities"].update({"1": 7}),
            "orders[7].in_wms.despatched_quantities[1]: despatched 7 must be > 0 and <= the line quantity 6 "
            "(order SO0001008)",
        ),
        (
            lambda d: d["drift"].append(
                {"kind": "true_shrink", "sku": "X1", "warehouse": "LEEDS", "quantity": -1}
            ),
            "drift[2].sku: unknown SKU 'X1' (true_shrink X1 at LEEDS)",
        ),
        (
            lambda d: d["drift"].append(
                {"kind": "uom_mismatch", "sku": "MUG-STONE", "warehouse": "LEEDS", "quantity": 1}
            ),
            "drift[2].sku: 'MUG-STONE' has wms_units_per_sage_unit 1, so no UoM mismatch "
            "(uom_mismatch MUG-STONE at LEEDS)",
        ),
        (
            lambda d: d["expected"].append(
                {"sku": "MUG-STONE", "warehouse": "LONDON", "cause": "timing", "quantity": 1}
            ),
            "expected[2].warehouse: unknown warehouse 'LONDON' (expected timing for MUG-STONE at LONDON)",
        ),
        (
            lambda d: d["opening_stock"].append(
                {"sku": "GIFTWRAP", "warehouse": "LEEDS", "sage_confirmed": 5}
            ),
            "opening_stock[24].sku: 'GIFTWRAP' is a ServiceLabour item and holds no stock "
            "(stock GIFTWRAP at LEEDS)",
        ),
        (
            lambda d: d["receipts"].append(
                {
                    "reference": "ASN1",
                    "sku": "NOPE",
                    "warehouse": "LEEDS",
                    "quantity": 5,
                    "unit_cost": 1,
                    "expected": "2026-11-22T08:00:00Z",
                }
            ),
            "receipts[0].sku: unknown SKU 'NOPE' (receipt ASN1)",
        ),
        (
            lambda d: d["opening_stock"][0].update(wms_on_hand=Decimal("143.5")),
            "opening_stock[0].wms_on_hand: the WMS holds whole units, 143.5 is not "
            "(stock TSHIRT-BLK-M at LEEDS)",
        ),
    ],
)
def test_cross_reference_refusals(demo: dict[str, Any], mutate: Any, message: str) -> None:
    mutate(demo)
    assert message in problems_of(demo)


def test_the_model_refuses_the_same_problems(demo: dict[str, Any]) -> None:
    # The simulators validate with the model alone, so it must refuse cross-reference problems too.
    demo["orders"][2]["lines"][1]["sku"] = "ABC"
    with pytest.raises(ValidationError, match=r"orders\[2\]\.lines\[1\]\.sku: unknown SKU 'ABC'"):
        Scenario.model_validate(demo)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"name": "x", ')
    with pytest.raises(ScenarioError, match="not valid JSON"):
        read_scenario(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        read_scenario(tmp_path / "bad.yaml")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ScenarioError, match="top level must be an object"):
        read_scenario(tmp_path / "list.json")
    with pytest.raises(ScenarioError, match="no such file"):
        read_scenario(tmp_path / "missing.json")


def test_json_schema_accepts_the_demo_and_describes_fields(demo: dict[str, Any]) -> None:
    schema = scenario_json_schema()
    jsonschema.Draft202012Validator(schema).validate(
        jsonutil.loads(settings.demo_scenario_path().read_text())
    )
    assert "FIFO" in schema["$defs"]["ProductGroup"]["properties"]["costing_method"]["description"]
    assert schema["$defs"]["PlantedDrift"]["properties"]["quantity"]["description"]
    bad = copy.deepcopy(demo)
    bad["products"][0]["unit_cost"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(jsonutil.loads(jsonutil.dumps(bad)))


def test_shipped_schema_file_is_current() -> None:
    assert jsonutil.loads(SCHEMA_FILE.read_text()) == jsonutil.loads(jsonutil.dumps(scenario_json_schema()))


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    text = (settings.PROJECT_ROOT / "docs" / "scenarios.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert example is not None
    (tmp_path / "example.yaml").write_text(example.group(1))
    s = read_scenario(tmp_path / "example.yaml")
    assert [(e.sku, e.cause, e.quantity) for e in s.expected] == [("MUG-STONE", "unexplained", Decimal(-3))]
