"""The WMS interface the pipeline talks to, and the canonical records every WMS is normalised into.

Kept vendor-neutral on purpose: Mintsoft is the first implementation, Peoplevox or ShipBob can follow
by implementing `WmsClient` and a status mapping. Every record carries the vendor's raw status next to
the canonical one, and a deterministic `dedupe_key`, because WMS feeds are at-least-once and unordered
with no event id (see the research notes): the key is how two deliveries of one event are recognised.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sage_wms_pipeline import jsonutil

# --------------------------------------------------------------------------------------------- errors


class WmsError(Exception):
    """Base of every error a WMS client raises."""


class WmsAuthError(WmsError):
    """Credentials refused, or the key was refused again straight after a refresh."""


class WmsNotFoundError(WmsError):
    """The WMS has no such record (HTTP 404)."""


class WmsValidationError(WmsError):
    """The WMS refused the request as invalid or against a business rule (HTTP 400 with a message)."""

    def __init__(self, message: str, status_code: int = 400, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class WmsRateLimitedError(WmsError):
    """Still throttled (HTTP 429) after the bounded retries."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WmsUnavailableError(WmsError):
    """5xx, timeouts or connection failures that outlasted the bounded retries."""


# ------------------------------------------------------------------------------------ canonical model


def utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken as UTC (WMS servers often omit the offset)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def make_dedupe_key(vendor: str, kind: str, *parts: object) -> str:
    """Stable hash of what identifies an event; Decimal and datetime are normalised first.

    Decimal is normalised so 2, 2.0 and 2.00 (the same quantity written differently on two deliveries)
    hash alike; datetimes are reduced to UTC milliseconds, the precision WMS timestamps carry.
    """

    def norm(p: object) -> str:
        if p is None:
            return ""
        if isinstance(p, Decimal):
            return format(p.normalize(), "f")
        if isinstance(p, datetime):
            return jsonutil.iso_z(p)
        if isinstance(p, (list, tuple)):
            return "[" + ",".join(norm(x) for x in p) + "]"
        return str(p)

    text = "\x1f".join([vendor, kind, *(norm(p) for p in parts)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _datetimes_are_utc(cls, value: Any) -> Any:
        return utc(value) if isinstance(value, datetime) else value


class OrderStatus(StrEnum):
    """Canonical order status. Progress states are ranked; side states are handled in `apply_monotonic`."""

    NEW = "NEW"  # known to the WMS, stock not yet allocated
    ALLOCATED = "ALLOCATED"
    PRINTED = "PRINTED"  # released to the floor: despatch note printed / awaiting picking
    PICKING = "PICKING"
    PICKED = "PICKED"
    PACKED = "PACKED"
    DESPATCHED = "DESPATCHED"
    ON_BACKORDER = "ON_BACKORDER"  # side state: stock short
    ON_HOLD = "ON_HOLD"  # side state: held (stock policy, payment, query, pack-and-hold...)
    CANCELLED = "CANCELLED"


PROGRESS_RANK: dict[OrderStatus, int] = {
    OrderStatus.NEW: 0,
    OrderStatus.ALLOCATED: 1,
    OrderStatus.PRINTED: 2,
    OrderStatus.PICKING: 3,
    OrderStatus.PICKED: 4,
    OrderStatus.PACKED: 5,
    OrderStatus.DESPATCHED: 6,
}
SIDE_STATES = frozenset({OrderStatus.ON_BACKORDER, OrderStatus.ON_HOLD})
TERMINAL_STATES = frozenset({OrderStatus.DESPATCHED, OrderStatus.CANCELLED})
# Real backward moves a WMS makes (unprint; unallocate), accepted only from a strictly newer update.
ALLOWED_BACKWARD: frozenset[tuple[OrderStatus, OrderStatus]] = frozenset(
    {
        (OrderStatus.PRINTED, OrderStatus.ALLOCATED),
        (OrderStatus.PRINTED, OrderStatus.NEW),
        (OrderStatus.ALLOCATED, OrderStatus.NEW),
    }
)


class OrderLine(_Record):
    sku: str
    quantity: Decimal = Field(ge=0)
    allocated: Decimal = Field(default=Decimal(0), ge=0)
    back_ordered: Decimal = Field(default=Decimal(0), ge=0)
    line_id: str | None = None


class WmsOrder(_Record):
    """An order as the WMS last reported it."""

    vendor: str
    order_id: str
    order_number: str
    external_reference: str | None = None
    status: OrderStatus
    raw_status: str
    updated_at: datetime
    warehouse_id: str | None = None
    lines: tuple[OrderLine, ...] = ()
    despatched_at: datetime | None = None
    tracking_number: str | None = None
    part: int | None = Field(default=None, description="Split orders: this part's number")
    number_of_parts: int | None = None
    dedupe_key: str

    @classmethod
    def key_for(cls, vendor: str, order_id: str, raw_status: str, updated_at: datetime) -> str:
        # The same order re-read unchanged is the same record; any change moves LastUpdated.
        return make_dedupe_key(vendor, "order", order_id, raw_status, updated_at)


class DespatchLine(_Record):
    sku: str
    quantity: Decimal = Field(gt=0)
    warehouse_id: str | None = None


class DespatchEvent(_Record):
    """Goods physically left the warehouse: one shipment (parcel) of one order (or order part).

    A second parcel of the same order is a different event, so the shipment/parcel identity and its
    lines are part of the dedupe key; a repeat delivery of the same parcel hashes the same.
    """

    vendor: str
    order_id: str
    order_number: str
    external_reference: str | None = None
    shipment_id: str | None = Field(
        default=None, description="Parcel / shipment identity where the WMS has one"
    )
    tracking_number: str | None = None
    courier: str | None = None
    despatched_at: datetime
    lines: tuple[DespatchLine, ...]
    status: OrderStatus = OrderStatus.DESPATCHED
    raw_status: str
    part: int | None = None
    number_of_parts: int | None = None
    dedupe_key: str

    @classmethod
    def key_for(
        cls,
        vendor: str,
        order_id: str,
        shipment_id: str | None,
        tracking_number: str | None,
        despatched_at: datetime,
        lines: Sequence[DespatchLine],
    ) -> str:
        line_part = sorted((line.sku, line.quantity.normalize()) for line in lines)
        return make_dedupe_key(
            vendor, "despatch", order_id, shipment_id, tracking_number, despatched_at, line_part
        )


class StockPosition(_Record):
    """One SKU in one warehouse at snapshot time, in WMS units.

    physical = everything in the building that is sellable or reserved (quarantine excluded);
    free = physical - allocated; quarantine and inbound are reported separately, never in physical.
    """

    vendor: str
    sku: str
    warehouse_id: str
    physical: Decimal
    allocated: Decimal = Field(ge=0)
    free: Decimal
    quarantine: Decimal = Field(ge=0)
    inbound: Decimal = Field(ge=0)
    as_of: datetime
    dedupe_key: str


class MovementKind(StrEnum):
    RECEIPT = "RECEIPT"
    DESPATCH = "DESPATCH"
    ADJUSTMENT_IN = "ADJUSTMENT_IN"
    ADJUSTMENT_OUT = "ADJUSTMENT_OUT"
    QUARANTINE = "QUARANTINE"
    RELEASE_QUARANTINE = "RELEASE_QUARANTINE"
    SCRAP = "SCRAP"
    TRANSFER = "TRANSFER"
    RETURN = "RETURN"
    ALLOCATION = "ALLOCATION"  # reservation only: physical stock does not move
    OTHER = "OTHER"


class StockMovement(_Record):
    """A ledger entry. `quantity` is the signed change of the physical (sellable + reserved) level,
    `quarantine_quantity` the signed change of quarantine; a move into quarantine has both."""

    vendor: str
    movement_id: str | None = None
    sku: str
    warehouse_id: str
    quantity: Decimal
    quarantine_quantity: Decimal = Decimal(0)
    kind: MovementKind
    raw_action: str
    reason: str | None = None
    order_id: str | None = None
    asn_id: str | None = None
    return_id: str | None = None
    occurred_at: datetime
    dedupe_key: str


class ReturnDisposition(StrEnum):
    RESTOCK = "RESTOCK"
    QUARANTINE = "QUARANTINE"
    SCRAP = "SCRAP"
    PENDING = "PENDING"


class ReturnEvent(_Record):
    """One returned line of one return."""

    vendor: str
    return_id: str
    order_id: str | None
    order_number: str | None = None
    sku: str
    quantity: Decimal = Field(gt=0)
    warehouse_id: str | None = None
    disposition: ReturnDisposition = Field(description="PENDING until the return is confirmed")
    raw_status: str
    confirmed: bool = True
    reason: str | None = None
    returned_at: datetime
    dedupe_key: str


class ReceiptStatus(StrEnum):
    EXPECTED = "EXPECTED"
    RECEIVING = "RECEIVING"
    PARTIALLY_BOOKED_IN = "PARTIALLY_BOOKED_IN"
    BOOKED_IN = "BOOKED_IN"
    CANCELLED = "CANCELLED"


class Receipt(_Record):
    """One line of an inbound delivery (ASN). Quantities are cumulative: a consumer posts the increase
    of quantity_booked over what it has already posted."""

    vendor: str
    asn_id: str
    line_id: str | None = None
    reference: str | None = None
    sku: str
    warehouse_id: str
    quantity_expected: Decimal = Field(ge=0)
    quantity_received: Decimal = Field(ge=0)
    quantity_booked: Decimal = Field(ge=0)
    status: ReceiptStatus
    raw_status: str
    updated_at: datetime
    dedupe_key: str


class QuarantinedRecord(_Record):
    """A vendor record the client could not normalise; kept whole so nobody loses it."""

    vendor: str
    source: str = Field(description="Endpoint the record came from")
    payload: Any
    reason: str = Field(description="What is wrong, naming the field")
    dedupe_key: str | None = None


class ManifestLine(_Record):
    sku: str = Field(min_length=1)
    quantity: Decimal = Field(gt=0)
    unit_price: Decimal = Field(default=Decimal(0), ge=0)


class OrderManifest(_Record):
    """What the pipeline asks the WMS to ship. `order_number` is the idempotency key."""

    order_number: str = Field(min_length=1, max_length=50)
    external_reference: str | None = None
    warehouse_id: str
    courier_service: str = "AUTO"
    channel: str | None = None
    currency: str = "GBP"
    first_name: str = ""
    last_name: str = ""
    company_name: str = ""
    address_1: str = ""
    address_2: str = ""
    town: str = ""
    county: str = ""
    postcode: str = ""
    country: str = "GB"
    email: str | None = None
    phone: str | None = None
    required_despatch_date: datetime | None = None
    delivery_notes: str | None = None
    lines: tuple[ManifestLine, ...] = Field(min_length=1)


class CreatedOrder(_Record):
    order_id: str
    order_number: str
    created: bool = Field(description="False when the order already existed (a repeat create)")
    status: OrderStatus | None = None
    raw_status: str | None = None


T = TypeVar("T", bound=BaseModel)


class Batch(BaseModel, Generic[T]):
    """One read: normalised records, the ones that could not be normalised, and where to resume."""

    model_config = ConfigDict(frozen=True)

    records: list[T] = Field(default_factory=list)
    quarantined: list[QuarantinedRecord] = Field(default_factory=list)
    next_cursor: str | None = Field(default=None, description="Opaque; store it and pass it back as given")


# ------------------------------------------------------------------------------------- pure helpers


class _Keyed(Protocol):
    @property
    def dedupe_key(self) -> str: ...


K = TypeVar("K", bound=_Keyed)


def dedupe(records: Iterable[K]) -> list[K]:
    """Drop repeat deliveries (same dedupe_key), keeping the first of each in arrival order."""
    seen: set[str] = set()
    out: list[K] = []
    for record in records:
        if record.dedupe_key not in seen:
            seen.add(record.dedupe_key)
            out.append(record)
    return out


def status_accepts(
    current: OrderStatus, current_at: datetime, incoming: OrderStatus, incoming_at: datetime
) -> bool:
    """Whether an update to `incoming` (stamped incoming_at) may replace `current` (stamped current_at).

    - Terminal states (DESPATCHED, CANCELLED) are absorbing; only a newer copy of the same state replaces.
    - Reaching a terminal state always wins over a non-terminal one: neither can be undone.
    - Between progress states the higher rank wins whatever the timestamps (a late PICKED never undoes
      PACKED); an equal rank takes the newer copy; a lower rank only for a known real backward move
      (e.g. unprint) stamped strictly later.
    - Side states (hold, back order) come and go at any point before despatch, so entering or leaving
      one is ordered by timestamp alone, strictly newer wins.
    """
    current_at, incoming_at = utc(current_at), utc(incoming_at)
    if current in TERMINAL_STATES:
        return incoming == current and incoming_at > current_at
    if incoming in TERMINAL_STATES:
        return True
    if current in SIDE_STATES or incoming in SIDE_STATES:
        return incoming_at > current_at
    cur_rank, inc_rank = PROGRESS_RANK[current], PROGRESS_RANK[incoming]
    if inc_rank > cur_rank:
        return True
    if inc_rank == cur_rank:
        return incoming_at > current_at
    return (current, incoming) in ALLOWED_BACKWARD and incoming_at > current_at


def apply_monotonic(current: WmsOrder | None, incoming: WmsOrder) -> WmsOrder:
    """The order state after seeing `incoming`: a late or repeated update never moves it backwards."""
    if current is None:
        return incoming
    if (current.vendor, current.order_id) != (incoming.vendor, incoming.order_id):
        raise ValueError(
            f"apply_monotonic: order_id {incoming.vendor}:{incoming.order_id} "
            f"cannot update {current.vendor}:{current.order_id}"
        )
    if status_accepts(current.status, current.updated_at, incoming.status, incoming.updated_at):
        return incoming
    return current


def fold_orders(orders: Iterable[WmsOrder], known: dict[str, WmsOrder] | None = None) -> dict[str, WmsOrder]:
    """Apply many order updates monotonically; returns order_id -> resulting state."""
    state: dict[str, WmsOrder] = dict(known or {})
    for order in orders:
        state[order.order_id] = apply_monotonic(state.get(order.order_id), order)
    return state


# --------------------------------------------------------------------------------------- interface


class WmsClient(ABC):
    """What the pipeline needs from any WMS. Cursors are opaque strings the caller stores.

    Reads never stop on a bad record: it comes back in `Batch.quarantined` with the reason.
    A cursor of None means "from the beginning".
    """

    vendor: str

    @abstractmethod
    def create_order(self, manifest: OrderManifest) -> CreatedOrder:
        """Create the order, or return the existing one (created=False) if its number is already there."""

    @abstractmethod
    def cancel_order(self, order_id: str) -> None:
        """Cancel an order not yet despatched (a repeat is a no-op); WmsValidationError if refused."""

    @abstractmethod
    def get_order(self, order_id: str) -> WmsOrder:
        """One order as the WMS holds it now; WmsNotFoundError if unknown."""

    @abstractmethod
    def find_orders(self, order_number: str) -> list[WmsOrder]:
        """Every WMS order (all split parts) carrying this order number; empty if none."""

    @abstractmethod
    def orders_changed_since(self, cursor: str | None) -> Batch[WmsOrder]:
        """Orders changed since the cursor, one (monotonically folded) record per order."""

    @abstractmethod
    def despatches_since(self, cursor: str | None) -> Batch[DespatchEvent]:
        """Despatch events since the cursor, deduplicated."""

    @abstractmethod
    def stock_snapshot(self) -> Batch[StockPosition]:
        """Current stock per SKU and warehouse; next_cursor is None (a snapshot has no position)."""

    @abstractmethod
    def stock_movements_since(self, cursor: str | None) -> Batch[StockMovement]:
        """Stock ledger entries since the cursor."""

    @abstractmethod
    def returns_since(self, cursor: str | None) -> Batch[ReturnEvent]:
        """Returned lines since the cursor."""

    @abstractmethod
    def receipts_since(self, cursor: str | None) -> Batch[Receipt]:
        """ASN lines with booked-in quantity, changed since the cursor."""

    def close(self) -> None:  # noqa: B027 - optional hook, most clients hold a connection pool
        """Release connections."""

    def __enter__(self) -> WmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
