"""Cross-reference checks of a scenario: the rules pydantic's field validation cannot see.

Each problem is one line naming the field path and the row, e.g.
`orders[12].lines[1].sku: unknown SKU 'ABC' (order SO0001013)`, so a user can fix a hand-written
file. Both `Scenario` (model validator) and `scenario.io` use this one list, so the simulators
refuse exactly what `sage-wms scenario check` refuses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sage_wms_pipeline.scenario.model import Scenario


def _repeats(values: Iterable[str | int]) -> dict[int, int]:
    """Index of each repeated value -> index of its first occurrence."""
    first: dict[str | int, int] = {}
    out: dict[int, int] = {}
    for i, v in enumerate(values):
        if v in first:
            out[i] = first[v]
        else:
            first[v] = i
    return out


def _whole(value: Decimal) -> bool:
    return value == value.to_integral_value()


def scenario_problems(s: Scenario) -> list[str]:
    """Every cross-reference problem in `s`, in file order; empty when the scenario is consistent."""
    out: list[str] = []
    add = out.append

    for i, first in _repeats(g.code for g in s.product_groups).items():
        add(
            f"product_groups[{i}].code: duplicate group code {s.product_groups[i].code!r} "
            f"(first at product_groups[{first}])"
        )
    groups = {g.code: g for g in s.product_groups}

    dup = _repeats(p.sku for p in s.products)
    sage_codes = {p.sku for p in s.products}
    wms_codes = Counter(p.wms_code for p in s.products)
    for i, p in enumerate(s.products):
        if i in dup:
            add(f"products[{i}].sku: duplicate SKU {p.sku!r} (first at products[{dup[i]}])")
        if p.group not in groups:
            add(f"products[{i}].group: unknown product group {p.group!r} (product {p.sku})")
        if wms_codes[p.wms_code] > 1 and p.wms_sku is not None:
            add(f"products[{i}].wms_sku: WMS SKU {p.wms_code!r} is used by another product (product {p.sku})")
        elif p.wms_sku is not None and p.wms_sku != p.sku and p.wms_sku in sage_codes:
            add(f"products[{i}].wms_sku: {p.wms_sku!r} is another product's Sage SKU (product {p.sku})")
    products = {p.sku: p for p in s.products}

    def stock_item(sku: str) -> bool:
        """False only for a known non-stock item, so an unknown SKU or group is reported once."""
        p = products.get(sku)
        g = groups.get(p.group) if p else None
        return g is None or g.product_type == "Stock"

    for field, values in (
        ("sage_name", [w.sage_name for w in s.warehouses]),
        ("wms_warehouse_id", [w.wms_warehouse_id for w in s.warehouses]),
    ):
        for i, first in _repeats(values).items():
            add(f"warehouses[{i}].{field}: duplicate {values[i]!r} (first at warehouses[{first}])")
    warehouses = {w.sage_name for w in s.warehouses}

    def ref(path: str, sku: str | None, warehouse: str | None, row: str) -> None:
        """Problems with a row's sku/warehouse pair; `row` says which row it is."""
        if sku is not None and sku not in products:
            add(f"{path}.sku: unknown SKU {sku!r} ({row})")
        if warehouse is not None and warehouse not in warehouses:
            add(f"{path}.warehouse: unknown warehouse {warehouse!r} ({row})")

    held: set[tuple[str, str]] = set()
    for i, o in enumerate(s.opening_stock):
        row = f"stock {o.sku} at {o.warehouse}"
        path = f"opening_stock[{i}]"
        ref(path, o.sku, o.warehouse, row)
        if (o.sku, o.warehouse) in held:
            add(f"{path}: duplicate opening stock for SKU {o.sku!r} in warehouse {o.warehouse!r}")
        held.add((o.sku, o.warehouse))
        p = products.get(o.sku)
        g = groups.get(p.group) if p else None
        if p is None or g is None:
            continue
        if g.product_type != "Stock":
            add(f"{path}.sku: {o.sku!r} is a {g.product_type} item and holds no stock ({row})")
        # The WMS counts whole units; a fraction here would load into Sage and then fail in the WMS.
        on_hand = o.wms_on_hand
        if on_hand is None:
            on_hand = (o.sage_confirmed + o.sage_unconfirmed) * p.wms_units_per_sage_unit
            field = "sage_confirmed"
        else:
            field = "wms_on_hand"
        if not _whole(on_hand):
            add(f"{path}.{field}: the WMS holds whole units, {on_hand} is not ({row})")
        if not _whole(o.wms_quarantine):
            add(f"{path}.wms_quarantine: the WMS holds whole units, {o.wms_quarantine} is not ({row})")
        if g.costing_method == "FIFO":
            layered = sum((layer.quantity for layer in o.fifo_layers), Decimal(0))
            if layered != o.sage_confirmed:
                add(
                    f"{path}.fifo_layers: FIFO layers sum to {layered}, not sage_confirmed "
                    f"{o.sage_confirmed} ({row}, group {g.code} is FIFO)"
                )
        elif o.fifo_layers:
            add(f"{path}.fifo_layers: group {g.code} costs by {g.costing_method}, not FIFO ({row})")

    for i, first in _repeats(c.account for c in s.customers).items():
        add(
            f"customers[{i}].account: duplicate customer account {s.customers[i].account!r} "
            f"(first at customers[{first}])"
        )
    customers = {c.account for c in s.customers}

    dup = _repeats(o.document_no for o in s.orders)
    for i, order in enumerate(s.orders):
        row = f"order {order.document_no}"
        path = f"orders[{i}]"
        if i in dup:
            add(
                f"{path}.document_no: duplicate order number {order.document_no!r} "
                f"(first at orders[{dup[i]}])"
            )
        if order.customer not in customers:
            add(f"{path}.customer: unknown customer {order.customer!r} ({row})")
        for j, line in enumerate(order.lines):
            lpath = f"{path}.lines[{j}]"
            if line.line_type != "Standard":
                if line.sku is not None or line.warehouse is not None:
                    add(f"{lpath}: a {line.line_type} line names no sku or warehouse ({row})")
                continue
            ref(lpath, line.sku, line.warehouse, row)
            if (
                line.sku in products
                and line.warehouse in warehouses
                and stock_item(line.sku)
                and (line.sku, line.warehouse) not in held
            ):
                add(
                    f"{lpath}.warehouse: SKU {line.sku!r} has no opening_stock row in warehouse "
                    f"{line.warehouse!r} ({row})"
                )
        w = order.in_wms
        if w is None:
            continue
        if order.status == "Draft":
            add(f"{path}.in_wms: a Draft order is never sent to the WMS ({row})")
        if w.status == "DESPATCHED" and not w.despatched_quantities:
            add(f"{path}.in_wms.despatched_quantities: a DESPATCHED order needs its quantities ({row})")
        for idx, qty in w.despatched_quantities.items():
            qpath = f"{path}.in_wms.despatched_quantities[{idx}]"
            if not 0 <= idx < len(order.lines):
                add(f"{qpath}: no line {idx} (the order has {len(order.lines)} lines; {row})")
                continue
            line = order.lines[idx]
            if line.line_type != "Standard" or line.sku is None or not stock_item(line.sku):
                add(f"{qpath}: line {idx} is not a stock line ({row})")
            elif not 0 < qty <= line.quantity:
                add(f"{qpath}: despatched {qty} must be > 0 and <= the line quantity {line.quantity} ({row})")
            elif not _whole(qty * products[line.sku].wms_units_per_sage_unit):
                add(f"{qpath}: despatched {qty} is not a whole number of WMS units ({row})")

    dup = _repeats(r.reference for r in s.receipts)
    for i, r in enumerate(s.receipts):
        row = f"receipt {r.reference}"
        path = f"receipts[{i}]"
        if i in dup:
            add(
                f"{path}.reference: duplicate receipt reference {r.reference!r} (first at receipts[{dup[i]}])"
            )
        ref(path, r.sku, r.warehouse, row)
        if r.sku in products and not stock_item(r.sku):
            add(f"{path}.sku: {r.sku!r} is not a stock item ({row})")
        elif r.sku in products and not _whole(r.quantity * products[r.sku].wms_units_per_sage_unit):
            add(f"{path}.quantity: {r.quantity} is not a whole number of WMS units ({row})")

    for i, d in enumerate(s.drift):
        row = f"{d.kind} {d.sku} at {d.warehouse}"
        path = f"drift[{i}]"
        ref(path, d.sku, d.warehouse, row)
        p = products.get(d.sku)
        if d.kind == "standard_cost_change":
            g = groups.get(p.group) if p else None
            if d.new_standard_cost is None:
                add(f"{path}.new_standard_cost: required for a standard_cost_change ({row})")
            elif p is not None and p.unit_cost != d.new_standard_cost:
                add(
                    f"{path}.new_standard_cost: {d.new_standard_cost} differs from the product's unit_cost "
                    f"{p.unit_cost}, which is the standard cost now ({row})"
                )
            if g is not None and g.costing_method != "Standard":
                add(f"{path}.sku: group {g.code} costs by {g.costing_method}, not Standard ({row})")
        else:
            for name in ("new_standard_cost", "previous_standard_cost", "effective"):
                if getattr(d, name) is not None:
                    add(f"{path}.{name}: only a standard_cost_change carries it ({row})")
        if d.kind == "uom_mismatch" and p is not None and p.wms_units_per_sage_unit == 1:
            add(f"{path}.sku: {d.sku!r} has wms_units_per_sage_unit 1, so no UoM mismatch ({row})")

    seen: set[tuple[str, str, str]] = set()
    for i, e in enumerate(s.expected):
        row = f"expected {e.cause} for {e.sku} at {e.warehouse}"
        ref(f"expected[{i}]", e.sku, e.warehouse, row)
        key = (e.sku, e.warehouse, e.cause)
        if key in seen:
            add(
                f"expected[{i}]: duplicate row for SKU {e.sku!r}, warehouse {e.warehouse!r}, "
                f"cause {e.cause!r}"
            )
        seen.add(key)
    return out
