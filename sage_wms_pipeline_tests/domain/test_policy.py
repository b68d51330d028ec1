from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from sage_wms_pipeline.domain.policy import (
    Policy,
    PolicyError,
    WarehouseMapping,
    load_policy,
    validate_policy,
)
from sage_wms_pipeline.scenario.io import read_scenario
from sage_wms_pipeline.settings import demo_scenario_path


def test_shipped_default_policy_is_valid_and_exact() -> None:
    p = load_policy()
    assert p.valuation_master == "sage" and p.fulfilment_trigger == "despatch"
    assert p.tolerances.value_materiality_gbp == Decimal("100.00")
    assert p.tolerances.by_abc_class["C"].percent == Decimal(5)
    assert p.wms_warehouse_id("BRISTOL") == 2 and p.sage_warehouse(3) == "3PL-MK"
    assert p.sku_for_sage("CANDLE-FIG").wms_sku == "CNDL-FIG-200"  # type: ignore[union-attr]


def test_yaml_floats_are_read_as_exact_decimals(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("tolerances:\n  value_materiality_gbp: 0.10\n  default: {abs_units: 0.3, percent: 1.5}\n")
    p = load_policy(f)
    assert p.tolerances.value_materiality_gbp == Decimal("0.10")
    assert p.tolerances.default.abs_units == Decimal("0.3")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("fulfilment_trigger: ship\n", "fulfilment_trigger"),
        ("tolerances:\n  by_abc_class:\n    D: {percent: 1}\n", "tolerances.by_abc_class.D"),
        ("tolerances:\n  default: {percent: -1}\n", "tolerances.default.percent"),
        ("restock: {authority: finance}\n", "restock.authority"),
        (
            "warehouses:\n  - {sage_name: LEEDS, wms_warehouse_id: 1}\n"
            "  - {sage_name: HULL, wms_warehouse_id: 1}\n",
            "warehouses[1]: WMS key 1 already mapped at warehouses[0]",
        ),
        (
            "skus:\n  - {sage_code: A, wms_sku: X, wms_units_per_sage_unit: 0}\n",
            "skus.0.wms_units_per_sage_unit",
        ),
        ("colour: blue\n", "colour"),
        ("outbox: {backoff_base_seconds: 60, backoff_max_seconds: 30}\n", "backoff_max_seconds"),
    ],
)
def test_bad_policy_is_refused_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(f)
    assert field in str(exc.value)
    assert str(f) in str(exc.value)


def test_not_a_mapping_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="mapping"):
        validate_policy([1, 2])
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


def test_scenario_supplies_the_mappings() -> None:
    s = read_scenario(demo_scenario_path())
    p = load_policy(scenario=s)
    assert len(p.warehouses) == 3 and len(p.skus) == len(s.products)
    card = p.sku_for_sage("CARD-XMAS-6")
    assert card is not None and card.wms_units_per_sage_unit == 6 and card.abc_class == "C"
    assert p.sku_for_wms("CNDL-FIG-200").sage_code == "CANDLE-FIG"  # type: ignore[union-attr]
    # The WMS code CANDLE-FIG is not a WMS SKU: it is another product's Sage code.
    assert p.sku_for_wms("CANDLE-FIG") is None


def test_tolerance_precedence() -> None:
    p = Policy.model_validate(
        {
            "tolerances": {
                "default": {"abs_units": 9},
                "by_abc_class": {"A": {"percent": 1}},
                "by_product_group": {"GIFTS": {"abs_units": 2}},
            }
        }
    )
    assert p.tolerance_for("GIFTS", "A").abs_units == 2
    assert p.tolerance_for("HOME", "A").percent == 1
    assert p.tolerance_for("HOME", None).abs_units == 9


def test_lookups_follow_a_copy_with_new_mappings() -> None:
    p = load_policy()
    assert p.wms_warehouse_id("LEEDS") == 1
    q = p.model_copy(update={"warehouses": [WarehouseMapping(sage_name="HULL", wms_warehouse_id=9)]})
    assert q.wms_warehouse_id("HULL") == 9
    with pytest.raises(KeyError, match="LEEDS"):
        q.wms_warehouse_id("LEEDS")
