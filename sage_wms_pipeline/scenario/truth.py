"""What each simulator should hold right after loading a scenario, and the variance that implies.

This is the reference arithmetic of docs/scenarios.md, written once: tests compare it with the
planted ground truth (`Scenario.expected`) and with what the two APIs report after a load.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sage_wms_pipeline.scenario.model import Scenario

ZERO = Decimal(0)


@dataclass
class Position:
    """One SKU in one warehouse after load. Sage figures in Sage units, WMS figures in WMS units."""

    sage_in_stock: Decimal = ZERO  # warehouse_holdings.quantity_in_stock (confirmed + unconfirmed)
    wms_level: Decimal = ZERO  # sellable level, quarantine excluded
    wms_quarantine: Decimal = ZERO
    units: int = 1  # wms_units_per_sage_unit

    @property
    def wms_in_sage_units(self) -> Decimal:
        return (self.wms_level + self.wms_quarantine) / self.units

    @property
    def variance(self) -> Decimal:
        """WMS - Sage in Sage units, counting quarantined stock as physically held."""
        return self.wms_in_sage_units - self.sage_in_stock


def positions_after_load(s: Scenario) -> dict[tuple[str, str], Position]:
    """(sku, warehouse) -> Position, as both simulators should report it straight after the load."""
    units = {p.sku: p.wms_units_per_sage_unit for p in s.products}
    out: dict[tuple[str, str], Position] = {}
    for o in s.opening_stock:
        k = units[o.sku]
        sage = o.sage_confirmed + o.sage_unconfirmed
        on_hand = o.wms_on_hand if o.wms_on_hand is not None else sage * k
        out[(o.sku, o.warehouse)] = Position(sage, on_hand, o.wms_quarantine, k)
    for order in s.orders:
        if order.in_wms is None:
            continue
        for idx, qty in order.in_wms.despatched_quantities.items():
            line = order.lines[idx]
            assert line.sku is not None and line.warehouse is not None  # checked on read
            out[(line.sku, line.warehouse)].wms_level -= qty * units[line.sku]
    for r in s.receipts:
        pos = out.setdefault((r.sku, r.warehouse), Position(units=units[r.sku]))
        if r.booked_in_wms:
            pos.wms_level += r.quantity * units[r.sku]
        if r.posted_to_sage:
            pos.sage_in_stock += r.quantity
    return out


def expected_by_pair(s: Scenario) -> dict[tuple[str, str], Decimal]:
    """Ground truth summed over causes: (sku, warehouse) -> expected total variance."""
    total: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for e in s.expected:
        total[(e.sku, e.warehouse)] += e.quantity
    return dict(total)


def implied_variances(s: Scenario) -> dict[tuple[str, str], Decimal]:
    """(sku, warehouse) -> variance implied by the data, for pairs where it is not zero."""
    return {key: pos.variance for key, pos in positions_after_load(s).items() if pos.variance != 0}
