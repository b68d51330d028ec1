"""Which WMS movements post a despatch to Sage, and onto which Sage order line.

At the policy's fulfilment trigger (pick, pack or despatch) a WMS order line is matched to its
Sage order line by order number (``SO0001003-2`` is part 2 of ``SO0001003``), SKU mapping and
warehouse, and its quantity is converted to Sage stock units. A line with no Sage counterpart is
an orphan, reported rather than posted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sage_wms_pipeline.domain.manifests import parse_order_number
from sage_wms_pipeline.domain.policy import Policy, Trigger

_DONE = frozenset({"DESPATCHED", "INVOICED", "INVOICEDFAILED"})
TRIGGER_STATUSES: dict[str, frozenset[str]] = {
    "pick": frozenset({"PICKED", "PACKANDHOLD"}) | _DONE,
    "pack": frozenset({"PACKANDHOLD", "PACKED"}) | _DONE,
    "despatch": _DONE,
}
SAGE_QTY_STEP = Decimal("0.00001")  # Sage holds quantities to 5 dp


def counts_at_trigger(wms_status: str, trigger: Trigger) -> bool:
    """True when a WMS order in this status has reached the trigger point."""
    return wms_status.upper() in TRIGGER_STATUSES[trigger]


@dataclass(frozen=True)
class WmsDespatchLine:
    """One WMS line at (or past) pick/pack/despatch. line_ref identifies it within the WMS order,
    including the shipment for split despatches, so the dedupe key is stable across re-reads."""

    order_number: str
    line_ref: str
    wms_sku: str
    wms_warehouse_id: int
    quantity: Decimal
    status: str
    event_at: datetime

    @property
    def dedupe_key(self) -> str:
        return f"wms:{self.order_number}:{self.line_ref}"


@dataclass(frozen=True)
class SageOpenLine:
    """A Sage order line still to despatch (stock units)."""

    document_no: str
    order_id: int
    line_id: int
    sku: str
    warehouse: str
    outstanding: Decimal
    document_status: str = "EnumDocumentStatusLive"


@dataclass(frozen=True)
class Posting:
    dedupe_key: str
    order_id: int
    document_no: str
    line_id: int
    sku: str
    warehouse: str
    quantity: Decimal
    source: WmsDespatchLine


@dataclass(frozen=True)
class Orphan:
    source: WmsDespatchLine
    reason: str
    quantity: Decimal | None = None


@dataclass
class PostingPlan:
    postings: list[Posting] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    not_yet: list[WmsDespatchLine] = field(default_factory=list)
    already_known: list[WmsDespatchLine] = field(default_factory=list)


def to_sage_quantity(wms_quantity: Decimal, units_per_sage_unit: int) -> Decimal | None:
    """WMS units -> Sage units, or None when it is not exact at Sage's 5 dp."""
    q = wms_quantity / Decimal(units_per_sage_unit)
    return q if q == q.quantize(SAGE_QTY_STEP) else None


def plan_postings(
    lines: Iterable[WmsDespatchLine],
    sage_lines: Iterable[SageOpenLine],
    policy: Policy,
    known_keys: Collection[str] = (),
) -> PostingPlan:
    """Match WMS lines at the trigger to Sage lines; split over several Sage lines of the same
    product and warehouse by their outstanding quantity, in line order.

    ``known_keys``: dedupe keys (as ``WmsDespatchLine.dedupe_key``) already in the outbox; those
    lines are skipped, since Sage's outstanding quantities may already reflect them.
    """
    known = set(known_keys)
    index: dict[tuple[str, str, str], list[SageOpenLine]] = {}
    docs: set[str] = set()
    for s in sorted(sage_lines, key=lambda s: (s.document_no, s.line_id)):
        index.setdefault((s.document_no, s.sku, s.warehouse), []).append(s)
        docs.add(s.document_no)
    remaining: dict[int, Decimal] = {}
    plan = PostingPlan()
    for line in lines:
        if line.dedupe_key in known:
            plan.already_known.append(line)
            continue
        if not counts_at_trigger(line.status, policy.fulfilment_trigger):
            plan.not_yet.append(line)
            continue
        sku = policy.sku_for_wms(line.wms_sku)
        if sku is None:
            plan.orphans.append(Orphan(line, f"wms_sku {line.wms_sku!r} has no Sage mapping"))
            continue
        try:
            warehouse = policy.sage_warehouse(line.wms_warehouse_id)
        except KeyError:
            plan.orphans.append(Orphan(line, f"wms_warehouse_id {line.wms_warehouse_id} has no Sage mapping"))
            continue
        qty = to_sage_quantity(line.quantity, sku.wms_units_per_sage_unit)
        if qty is None or qty <= 0:
            plan.orphans.append(
                Orphan(
                    line,
                    f"quantity {line.quantity} is not a positive whole number of Sage units at 5 dp "
                    f"({sku.wms_units_per_sage_unit} WMS units per Sage unit)",
                )
            )
            continue
        # The full number first: a Sage document number may itself end in -<digits>.
        doc = line.order_number if line.order_number in docs else parse_order_number(line.order_number)[0]
        candidates = index.get((doc, sku.sage_code, warehouse))
        if not candidates:
            reason = (
                f"no Sage order {doc}"
                if doc not in docs
                else f"order {doc} has no open line for {sku.sage_code} in {warehouse}"
            )
            plan.orphans.append(Orphan(line, reason, qty))
            continue
        left = qty
        for i, s in enumerate(candidates):
            avail = remaining.setdefault(s.line_id, s.outstanding)
            last = i == len(candidates) - 1
            take = left if last else min(left, avail)
            if take <= 0:
                continue
            if last and take > avail:
                # Over-despatch: post what is outstanding and report the excess.
                if avail > 0:
                    plan.postings.append(_posting(line, s, avail, len(candidates) > 1))
                plan.orphans.append(
                    Orphan(
                        line,
                        f"exceeds outstanding quantity on {doc} line {s.line_id}",
                        take - max(avail, Decimal(0)),
                    )
                )
                remaining[s.line_id] = Decimal(0)
                left = Decimal(0)
                break
            plan.postings.append(_posting(line, s, take, len(candidates) > 1))
            remaining[s.line_id] = avail - take
            left -= take
            if left == 0:
                break
    return plan


def _posting(line: WmsDespatchLine, s: SageOpenLine, qty: Decimal, split: bool) -> Posting:
    key = f"{line.dedupe_key}@{s.line_id}" if split else line.dedupe_key
    return Posting(
        dedupe_key=key,
        order_id=s.order_id,
        document_no=s.document_no,
        line_id=s.line_id,
        sku=s.sku,
        warehouse=s.warehouse,
        quantity=qty,
        source=line,
    )
