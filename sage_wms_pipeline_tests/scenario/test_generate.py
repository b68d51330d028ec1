"""The generator: deterministic from the seed, the documented shape, and planted drift with ground truth."""

from __future__ import annotations

import typing
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sage_wms_pipeline.scenario.generate import generate, seasonal_factor
from sage_wms_pipeline.scenario.io import read_scenario, validate_scenario, write_scenario
from sage_wms_pipeline.scenario.model import DriftKind, Scenario
from sage_wms_pipeline.scenario.truth import expected_by_pair, implied_variances, positions_after_load

ALL_KINDS = set(typing.get_args(DriftKind))


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    s = generate(skus=1000, warehouses=3, orders_per_day=500, days=4, seed=7)
    return validate_scenario(s)  # every generated row passes full validation


def test_same_seed_same_scenario_other_seed_differs() -> None:
    a = generate(skus=200, warehouses=3, orders_per_day=60, days=2, seed=11)
    b = generate(skus=200, warehouses=3, orders_per_day=60, days=2, seed=11)
    c = generate(skus=200, warehouses=3, orders_per_day=60, days=2, seed=12)
    assert a.model_dump() == b.model_dump()
    assert a.model_dump() != c.model_dump()


def test_catalogue_shape(scenario: Scenario) -> None:
    groups = {g.code: g for g in scenario.product_groups}
    assert {g.costing_method for g in groups.values()} == {"FIFO", "Average", "Standard"}
    assert {g.product_type for g in groups.values()} == {"Stock", "ServiceLabour", "Miscellaneous"}
    stock = [p for p in scenario.products if groups[p.group].product_type == "Stock"]
    assert len(scenario.products) == 1000
    # Pareto value curve: about a fifth of the SKUs are A items (80% of value).
    a_share = sum(p.abc_class == "A" for p in stock) / len(stock)
    assert 0.12 < a_share < 0.30, a_share
    assert {p.abc_class for p in stock} == {"A", "B", "C"}
    assert all(p.selling_price > p.unit_cost > 0 for p in stock)
    aliased = sum(p.wms_sku is not None for p in stock) / len(stock)
    packs = sum(p.wms_units_per_sage_unit > 1 for p in stock) / len(stock)
    assert 0.04 < aliased < 0.12 and 0.015 < packs < 0.07, (aliased, packs)
    kinds = Counter(w.kind for w in scenario.warehouses)
    assert kinds["own"] >= 2 and kinds["3pl"] == 1
    assert len({w.wms_warehouse_id for w in scenario.warehouses}) == 3


def test_opening_stock_shape(scenario: Scenario) -> None:
    groups = {g.code: g for g in scenario.product_groups}
    method = {p.sku: groups[p.group].costing_method for p in scenario.products}
    assert any(o.sage_unconfirmed > 0 for o in scenario.opening_stock)
    fifo = [o for o in scenario.opening_stock if method[o.sku] == "FIFO" and o.sage_confirmed > 0]
    assert fifo and all(sum(x.quantity for x in o.fifo_layers) == o.sage_confirmed for o in fifo)
    assert any(len(o.fifo_layers) >= 2 for o in fifo)
    assert all(not o.fifo_layers for o in scenario.opening_stock if method[o.sku] != "FIFO")


def test_orders_shape(scenario: Scenario) -> None:
    groups = {g.code: g for g in scenario.product_groups}
    stock_item = {p.sku: groups[p.group].product_type == "Stock" for p in scenario.products}
    assert len(scenario.orders) == 2000
    assert all(o.document_date < scenario.starts_at for o in scenario.orders)
    stock_lines = [sum(1 for ln in o.lines if ln.sku and stock_item[ln.sku]) for o in scenario.orders]
    assert set(stock_lines) == {1, 2, 3}
    assert 1.4 < sum(stock_lines) / len(stock_lines) < 2.2
    line_types = Counter(ln.line_type for o in scenario.orders for ln in o.lines)
    assert set(line_types) == {"Standard", "Charge", "Comment", "FreeText"}
    assert any(ln.sku and not stock_item[ln.sku] for o in scenario.orders for ln in o.lines)  # services
    statuses = Counter(o.status for o in scenario.orders)
    assert set(statuses) == {"Live", "OnHold", "Cancelled", "Draft"}
    assert statuses["Live"] / len(scenario.orders) > 0.9
    assert scenario.behaviour.return_rate >= Decimal("0.08") and scenario.behaviour.return_rate <= Decimal(
        "0.12"
    )
    assert Decimal("0.01") <= scenario.behaviour.shrink_rate <= Decimal("0.02")
    assert scenario.faults.sage.rate_5xx == 0 and scenario.faults.wms.duplicate_rate == 0


def test_november_december_peak() -> None:
    s = generate(
        skus=60,
        warehouses=3,
        orders_per_day=100,
        days=119,
        seed=3,
        starts_at=datetime(2026, 12, 19, 6, tzinfo=UTC),
        peak_factor=4.0,
    )
    assert len(s.orders) == 100 * 119
    per_day = Counter(o.document_date.date() for o in s.orders)
    peak = [n for d, n in per_day.items() if (d.month, d.day) >= (11, 20) and (d.month, d.day) <= (12, 18)]
    base = [n for d, n in per_day.items() if d.month in (8, 9, 10)]
    ratio = (sum(peak) / len(peak)) / (sum(base) / len(base))
    assert 3.6 < ratio < 4.4, ratio
    assert seasonal_factor(datetime(2026, 12, 25).date(), 4.0) < 1


def test_every_drift_kind_is_planted_with_its_ground_truth(scenario: Scenario) -> None:
    assert {d.kind for d in scenario.drift} == ALL_KINDS
    by_kind = defaultdict(list)
    for d in scenario.drift:
        by_kind[d.kind].append(d)
    orders = {o.document_no: o for o in scenario.orders}
    for d in by_kind["despatched_not_posted"]:
        assert d.quantity < 0 and d.cause == "timing"
        assert orders[d.reference].in_wms.status == "DESPATCHED" and orders[d.reference].status == "Live"
    receipts = {r.reference: r for r in scenario.receipts}
    for d in by_kind["received_not_in_sage"]:
        r = receipts[d.reference]
        assert r.booked_in_wms and not r.posted_to_sage and r.quantity == d.quantity and d.cause == "timing"
    stock = {(o.sku, o.warehouse): o for o in scenario.opening_stock}
    for d in by_kind["return_in_quarantine"]:
        assert stock[(d.sku, d.warehouse)].wms_quarantine == d.quantity > 0 and d.cause == "status"
    for d in by_kind["uom_mismatch"]:
        assert (
            scenario.product(d.sku).wms_units_per_sage_unit > 1
            and 0 < d.quantity < 1
            and d.cause == "mapping"
        )
    for d in by_kind["true_shrink"]:
        assert d.quantity < 0 and d.cause == "unexplained"
    for d in by_kind["true_gain"]:
        assert d.quantity > 0 and d.cause == "unexplained"
    for d in by_kind["bin_mis_slot"]:
        assert d.quantity == 0
    for d in by_kind["standard_cost_change"]:
        p = scenario.product(d.sku)
        assert (
            p.unit_cost == d.new_standard_cost != d.previous_standard_cost
            and d.effective < scenario.starts_at
        )
        assert d.cause is None


def test_expected_matches_drift_and_the_data(scenario: Scenario) -> None:
    planted: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for d in scenario.drift:
        if d.cause:
            planted[(d.sku, d.warehouse, d.cause)] += d.quantity
    assert {(e.sku, e.warehouse, e.cause): e.quantity for e in scenario.expected} == planted
    # The data itself implies exactly the planted variances, and nothing anywhere else.
    nonzero = {k: q for k, q in expected_by_pair(scenario).items() if q != 0}
    assert implied_variances(scenario) == nonzero
    positions = positions_after_load(scenario)
    for d in scenario.drift:
        if d.kind == "bin_mis_slot":
            assert positions[(d.sku, d.warehouse)].variance == 0
    # Pairs with drift are distinct, so each cause can be checked on its own.
    pairs = Counter((d.sku, d.warehouse) for d in scenario.drift if d.kind != "despatched_not_posted")
    assert max(pairs.values()) == 1


def test_generated_file_round_trips(tmp_path: Path) -> None:
    s = generate(skus=100, warehouses=4, orders_per_day=40, days=2, seed=5)
    write_scenario(s, tmp_path / "g.json")
    assert read_scenario(tmp_path / "g.json").model_dump() == validate_scenario(s).model_dump()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="skus must be at least"):
        generate(skus=5, warehouses=3, orders_per_day=10, days=1, seed=1)
    with pytest.raises(ValueError, match="warehouses must be between"):
        generate(skus=100, warehouses=0, orders_per_day=10, days=1, seed=1)


@pytest.mark.parametrize("warehouses", [1, 2, 3, 5])
def test_even_the_smallest_catalogue_plants_every_kind(warehouses: int) -> None:
    for seed in range(8):
        s = validate_scenario(generate(skus=50, warehouses=warehouses, orders_per_day=20, days=1, seed=seed))
        assert {d.kind for d in s.drift} == ALL_KINDS, (seed, warehouses)
        assert implied_variances(s) == {k: q for k, q in expected_by_pair(s).items() if q != 0}
