"""Mintsoft implementation of `WmsClient`, over httpx.

Transport: `POST /api/Auth` gives a key sent as `ms-apikey`; a 401 re-authenticates once and retries.
429 (honouring Retry-After), 5xx, timeouts and connection errors are retried with exponential backoff
and jitter, bounded by attempts and a per-call deadline. Lists are paged with PageNo/Limit until an
empty page, because Mintsoft returns no total count.

Reads are at-least-once: each incremental read goes back `lookback_seconds` before its cursor so that a
late record (Mintsoft may surface a despatch with an older LastUpdated) is still seen; repeats are
recognisable by `dedupe_key`, and re-applying an order state through `apply_monotonic` is harmless.
Records that cannot be normalised come back quarantined with the reason; they never stop a read and
never move a cursor, so a junk record cannot make the client skip real ones.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.wms.base import (
    Batch,
    CreatedOrder,
    DespatchEvent,
    DespatchLine,
    MovementKind,
    OrderLine,
    OrderManifest,
    OrderStatus,
    QuarantinedRecord,
    Receipt,
    ReceiptStatus,
    ReturnDisposition,
    ReturnEvent,
    StockMovement,
    StockPosition,
    WmsAuthError,
    WmsClient,
    WmsError,
    WmsNotFoundError,
    WmsOrder,
    WmsRateLimitedError,
    WmsUnavailableError,
    WmsValidationError,
    dedupe,
    fold_orders,
    make_dedupe_key,
    utc,
)

log = logging.getLogger(__name__)

VENDOR = "mintsoft"
MAX_PAGE_SIZE = 100

# Mintsoft status name -> canonical. NEW means "stock allocated" in Mintsoft. PACKANDHOLD is physically
# packed, so it ranks as PACKED (the hold shows in raw_status); the AWAITING*/QUERY/FAILED family are
# holds before the floor can work the order.
MINTSOFT_STATUS_MAP: dict[str, OrderStatus] = {
    "NEW": OrderStatus.ALLOCATED,
    "PRINTED": OrderStatus.PRINTED,
    "AWAITINGPICKING": OrderStatus.PRINTED,
    "PICKINGSTARTED": OrderStatus.PICKING,
    "PICKED": OrderStatus.PICKED,
    "PACKED": OrderStatus.PACKED,
    "PACKANDHOLD": OrderStatus.PACKED,
    "DESPATCHED": OrderStatus.DESPATCHED,
    "INVOICED": OrderStatus.DESPATCHED,
    "INVOICEDFAILED": OrderStatus.DESPATCHED,
    "CANCELLED": OrderStatus.CANCELLED,
    "ONBACKORDER": OrderStatus.ON_BACKORDER,
    "HOLDING": OrderStatus.ON_HOLD,
    "AWAITINGCONFIRMATION": OrderStatus.ON_HOLD,
    "AWAITINGDOCUMENTATION": OrderStatus.ON_HOLD,
    "AWAITINGADDITIONALITEM": OrderStatus.ON_HOLD,
    "AWAITINGPAYMENT": OrderStatus.ON_HOLD,
    "QUERYRAISED": OrderStatus.ON_HOLD,
    "FAILED": OrderStatus.ON_HOLD,
}

ASN_STATUS_MAP: dict[str, ReceiptStatus] = {
    "NEW": ReceiptStatus.EXPECTED,
    "AWAITINGDELIVERY": ReceiptStatus.EXPECTED,
    "AWAITINGPUTAWAY": ReceiptStatus.RECEIVING,
    "PARTIALLYBOOKEDIN": ReceiptStatus.PARTIALLY_BOOKED_IN,
    "BOOKEDIN": ReceiptStatus.BOOKED_IN,
    "CANCELLED": ReceiptStatus.CANCELLED,
}

RETURN_ACTION_MAP: dict[str, ReturnDisposition] = {
    "RESTOCK": ReturnDisposition.RESTOCK,
    "QUARANTINE": ReturnDisposition.QUARANTINE,
    "SCRAP": ReturnDisposition.SCRAP,
}

FLOW_KIND_MAP: dict[str, MovementKind] = {
    "STOCKIN": MovementKind.ADJUSTMENT_IN,
    "STOCKOUT": MovementKind.ADJUSTMENT_OUT,
    "COUNTCORRECTION": MovementKind.ADJUSTMENT_OUT,  # sign fixed from LevelChange below
    "DESPATCH": MovementKind.DESPATCH,
    "ASNSTOCKIN": MovementKind.RECEIPT,
    "QUARANTINE": MovementKind.QUARANTINE,
    "UNQUARANTINE": MovementKind.RELEASE_QUARANTINE,
    "SCRAP": MovementKind.SCRAP,
    "SCRAP_OFFHAND": MovementKind.SCRAP,
    "SCRAP_RETURN": MovementKind.SCRAP,
    "RETURN": MovementKind.RETURN,
    "RETURNTOQUARANTINE": MovementKind.RETURN,
    "TRANSFER": MovementKind.TRANSFER,
    "TRANSFERLOCATION": MovementKind.TRANSFER,
    "ALLOCATE": MovementKind.ALLOCATION,
    "UNALLOCATE": MovementKind.ALLOCATION,
}


class MintsoftConfig(BaseModel):
    """Connection settings. The password is a SecretStr so it never shows in logs or reprs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(
        description="Service root, e.g. https://api.mintsoft.co.uk (a trailing /api is fine)"
    )
    username: str = Field(min_length=1)
    password: SecretStr
    client_id: int | None = Field(default=None, description="Sent as ClientId on create (admin users)")
    timeout_seconds: float = Field(default=30.0, gt=0)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    page_size: int = Field(default=MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    deadline_seconds: float = Field(default=120.0, gt=0, description="Give up retrying one call after this")
    lookback_seconds: int = Field(
        default=7200, ge=0, description="Incremental reads re-read this far before the cursor (late records)"
    )
    max_pages: int = Field(default=100_000, ge=1, description="Safety stop for a server that ignores PageNo")
    verify_order_ids: bool = Field(
        default=True, description="Look up order ids that returns and ledger rows refer to (cached)"
    )

    @field_validator("base_url")
    @classmethod
    def _root_url(cls, value: str) -> str:
        value = value.rstrip("/")
        return value[: -len("/api")] if value.lower().endswith("/api") else value


class _Bad(Exception):
    """A record that cannot be normalised; the message names the field."""


R = TypeVar("R", bound=BaseModel)


# ------------------------------------------------------------------------------------ field parsing


_UK_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_DOTNET_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def parse_timestamp(value: Any) -> datetime:
    """Mintsoft writes timestamps in the server's culture: accept ISO 8601, UK d/m/y and .NET /Date()/."""
    if isinstance(value, datetime):
        return utc(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a timestamp: {value!r}")
    text = value.strip()
    if m := _DOTNET_DATE.match(text):
        return datetime.fromtimestamp(int(m.group(1)) / 1000, tz=UTC)
    if m := _UK_DATE.match(text):
        day, month, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
        hour, minute, second = (int(g) if g else 0 for g in m.group(4, 5, 6))
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    try:
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(f"not a timestamp: {value!r}") from None


def _get(row: Mapping[str, Any], field: str, where: str = "") -> Any:
    if not isinstance(row, Mapping):
        raise _Bad(f"{where or 'record'}: not an object")
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Bad(f"{where}{field}: missing")
    return value


def _text(row: Mapping[str, Any], field: str, where: str = "") -> str:
    return str(_get(row, field, where)).strip()


def _opt_text(row: Mapping[str, Any], field: str) -> str | None:
    value = row.get(field)
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _id(row: Mapping[str, Any], field: str, where: str = "") -> str:
    value = _get(row, field, where)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise _Bad(f"{where}{field}: not an id ({value!r})")
    if int(value) <= 0:
        raise _Bad(f"{where}{field}: not a positive id ({value!r})")
    return str(int(value))


def _opt_id(row: Mapping[str, Any], field: str, where: str = "") -> str | None:
    return None if row.get(field) in (None, "", 0) else _id(row, field, where)


def _qty(
    row: Mapping[str, Any],
    field: str,
    where: str = "",
    *,
    default: Decimal | None = None,
    signed: bool = False,
) -> Decimal:
    value = row.get(field)
    if value is None:
        if default is not None:
            return default
        raise _Bad(f"{where}{field}: missing")
    if isinstance(value, (bool, float)):
        # Bodies are parsed with Decimal, so a float here means the payload did not come off the wire.
        raise _Bad(f"{where}{field}: not an exact number ({value!r})")
    try:
        qty = Decimal(str(value))
    except InvalidOperation:
        raise _Bad(f"{where}{field}: not a number ({value!r})") from None
    if not qty.is_finite():
        raise _Bad(f"{where}{field}: not a number ({value!r})")
    if qty < 0 and not signed:
        raise _Bad(f"{where}{field}: negative quantity ({qty})")
    return qty


def _time(row: Mapping[str, Any], field: str, where: str = "") -> datetime:
    value = _get(row, field, where)
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise _Bad(f"{where}{field}: {exc}") from None


def _opt_time(row: Mapping[str, Any], field: str, where: str = "") -> datetime | None:
    return None if row.get(field) in (None, "") else _time(row, field, where)


def _status_key(name: str) -> str:
    return re.sub(r"[^A-Z_]", "", name.upper())


# --------------------------------------------------------------------------------------- cursors


def _time_cursor(stream: str, at: datetime) -> str:
    return f"{VENDOR}:{stream}:{jsonutil.iso_z(at)}"


def _id_cursor(stream: str, last_id: int) -> str:
    return f"{VENDOR}:{stream}:id:{last_id}"


def _read_time_cursor(stream: str, cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    prefix = f"{VENDOR}:{stream}:"
    if not cursor.startswith(prefix):
        raise ValueError(f"cursor {cursor!r} is not a {VENDOR} {stream} cursor")
    try:
        return parse_timestamp(cursor[len(prefix) :])
    except ValueError:
        raise ValueError(f"cursor {cursor!r}: bad timestamp") from None


def _read_id_cursor(stream: str, cursor: str | None) -> int:
    if cursor is None:
        return 0
    prefix = f"{VENDOR}:{stream}:id:"
    if not cursor.startswith(prefix) or not cursor[len(prefix) :].isdigit():
        raise ValueError(f"cursor {cursor!r} is not a {VENDOR} {stream} cursor")
    return int(cursor[len(prefix) :])


# ---------------------------------------------------------------------------------------- client


class MintsoftClient(WmsClient):
    """`WmsClient` for Mintsoft (and the sandbox simulator, which speaks the same API)."""

    vendor = VENDOR

    def __init__(
        self,
        config: MintsoftConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._http = httpx.Client(
            base_url=config.base_url,
            timeout=httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._sleep = sleep
        self._now = now
        self._key: str | None = None
        self._catalogue: dict[str, str] | None = None  # SKU -> ProductId
        self._product_skus: dict[str, str] = {}  # ProductId -> SKU
        self._statuses: dict[int, str] | None = None
        self._known_orders: dict[str, bool] = {}
        self.auth_count = 0  # how many keys were fetched; visible for tests and metrics

    @classmethod
    def from_settings(
        cls,
        base_url: str,
        username: str,
        password: str,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> MintsoftClient:
        """Plain values (e.g. from Dagster EnvVars) in; `options` are any other MintsoftConfig fields."""
        config = MintsoftConfig(base_url=base_url, username=username, password=SecretStr(password), **options)
        return cls(config, transport=transport, sleep=sleep)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"MintsoftClient({self.config.base_url!r}, user={self.config.username!r})"

    # ----------------------------------------------------------------------------- transport

    def _authenticate(self) -> str:
        body = {"Username": self.config.username, "Password": self.config.password.get_secret_value()}
        resp = self._with_retries("POST", "/api/Auth", body=body, authed=False)
        data = self._json(resp)
        key = (
            data if isinstance(data, str) else (data or {}).get("ApiKey") if isinstance(data, dict) else None
        )
        if not key:
            raise WmsAuthError("POST /api/Auth: no API key in the response")
        self._key = str(key)
        self.auth_count += 1
        log.info("mintsoft: new API key for user %s", self.config.username)
        return self._key

    def _backoff(self, state: RetryCallState) -> float:
        cfg = self.config
        exp = min(cfg.backoff_max_seconds, cfg.backoff_initial_seconds * 2 ** (state.attempt_number - 1))
        wait = random.uniform(0, exp)  # "full jitter": spreads retries of many callers
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, WmsRateLimitedError) and exc.retry_after is not None:
            # The server's word beats our guess; the deadline stops us if it asks for too long.
            wait = max(wait, exc.retry_after)
        return wait

    def _with_retries(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        authed: bool = True,
    ) -> httpx.Response:
        cfg = self.config
        retrying = Retrying(
            stop=stop_after_attempt(cfg.max_attempts) | stop_before_delay(cfg.deadline_seconds),
            wait=self._backoff,
            retry=retry_if_exception_type((WmsRateLimitedError, WmsUnavailableError)),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda s: log.warning(
                "mintsoft: %s %s failed (%s), retry %d",
                method,
                path,
                s.outcome.exception() if s.outcome else "?",
                s.attempt_number,
            ),
        )
        for attempt in retrying:
            with attempt:
                return self._send_once(method, path, params=params, body=body, authed=authed)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _send_once(
        self, method: str, path: str, *, params: Mapping[str, Any] | None, body: Any, authed: bool
    ) -> httpx.Response:
        refreshed = False
        while True:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if authed:
                if self._key is None:
                    self._authenticate()
                    refreshed = True
                headers["ms-apikey"] = self._key or ""
            try:
                resp = self._http.request(
                    method,
                    path,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    content=jsonutil.dumps(body) if body is not None else None,
                    headers=headers,
                )
            except httpx.TimeoutException as exc:
                raise WmsUnavailableError(f"{method} {path}: timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise WmsUnavailableError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 401 and authed and not refreshed:
                # Keys expire (24 h by default); fetch a new one once and resend.
                log.info("mintsoft: key refused on %s %s, re-authenticating", method, path)
                self._key = None
                continue
            self._raise_for_status(method, path, resp, authed)
            return resp

    def _raise_for_status(self, method: str, path: str, resp: httpx.Response, authed: bool) -> None:
        code = resp.status_code
        if code < 400:
            return
        message = self._message(resp)
        where = f"{method} {path}: HTTP {code}"
        if code == 401:
            if not authed:
                raise WmsAuthError(f"{where}: credentials refused for user {self.config.username!r}")
            raise WmsAuthError(f"{where}: API key refused even after re-authenticating: {message}")
        if code == 403:
            raise WmsAuthError(f"{where}: not permitted: {message}")
        if code == 404:
            raise WmsNotFoundError(f"{where}: {message or 'not found'}")
        if code == 429:
            raise WmsRateLimitedError(f"{where}: rate limited", retry_after=_retry_after(resp))
        if code >= 500:
            raise WmsUnavailableError(f"{where}: {message or resp.reason_phrase}")
        raise WmsValidationError(
            f"{where}: {message or resp.reason_phrase}", status_code=code, body=self._json_or_none(resp)
        )

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return jsonutil.loads(resp.content) if resp.content else None
        except ValueError as exc:
            raise WmsError(f"{resp.request.method} {resp.request.url.path}: response is not JSON") from exc

    @staticmethod
    def _json_or_none(resp: httpx.Response) -> Any:
        try:
            return jsonutil.loads(resp.content) if resp.content else None
        except ValueError:
            return None

    def _message(self, resp: httpx.Response) -> str:
        data = self._json_or_none(resp)
        if isinstance(data, dict):
            return str(data.get("Message") or data.get("message") or data.get("detail") or "")
        return resp.text[:300] if data is None else str(data)[:300]

    def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._json(self._with_retries("GET", path, params=params))

    def _pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[list[Any]]:
        """The rows of each page in turn; stops at the first empty page (Mintsoft gives no total)."""
        for page in range(1, self.config.max_pages + 1):
            rows = self._get_json(path, {**(params or {}), "PageNo": page, "Limit": self.config.page_size})
            if rows is None:
                rows = []
            if not isinstance(rows, list):
                raise WmsError(f"GET {path} page {page}: expected a JSON array, got {type(rows).__name__}")
            if not rows:
                return
            yield rows
        raise WmsError(f"GET {path}: still not empty after {self.config.max_pages} pages; stopping")

    # ------------------------------------------------------------------------ reference data

    def _load_catalogue(self) -> dict[str, str]:
        catalogue: dict[str, str] = {}
        for rows in self._pages("/api/Product/List"):
            for row in rows:
                if isinstance(row, dict) and row.get("SKU") and row.get("ID") is not None:
                    catalogue[str(row["SKU"])] = str(row["ID"])
        self._catalogue = catalogue
        self._product_skus = {pid: sku for sku, pid in catalogue.items()}
        return catalogue

    def catalogue(self, refresh: bool = False) -> dict[str, str]:
        """SKU -> ProductId of every WMS product (cached for the client's life)."""
        if self._catalogue is None or refresh:
            return self._load_catalogue()
        return self._catalogue

    def _check_sku(self, sku: str, where: str, refreshed: list[bool]) -> None:
        if sku in self.catalogue():
            return
        if not refreshed[0]:
            refreshed[0] = True  # a product added since the cache was filled: look once per read
            if sku in self.catalogue(refresh=True):
                return
        raise _Bad(f"{where}SKU: unknown SKU {sku!r}")

    def statuses(self) -> dict[int, str]:
        """Mintsoft status id -> name (ids are tenant data)."""
        if self._statuses is None:
            rows = self._get_json("/api/Order/Statuses") or []
            self._statuses = {int(r["ID"]): str(r["Name"]) for r in rows if isinstance(r, dict) and "ID" in r}
        return self._statuses

    def remember_orders(self, order_ids: Iterable[str]) -> None:
        """Order ids the caller already holds as real (e.g. from its own table): no lookup needed."""
        self._known_orders.update(dict.fromkeys((str(i) for i in order_ids), True))

    def _order_exists(self, order_id: str) -> bool:
        """Whether the WMS knows this order id: one GET per id not seen before (cached)."""
        if not self.config.verify_order_ids:
            return True
        if order_id not in self._known_orders:
            try:
                self._get_json(f"/api/Order/{order_id}")
                self._known_orders[order_id] = True
            except WmsNotFoundError:
                self._known_orders[order_id] = False
        return self._known_orders[order_id]

    def _require_order(self, order_id: str, where: str) -> None:
        if not self._order_exists(order_id):
            raise _Bad(f"{where}: unknown order {order_id}")

    # ------------------------------------------------------------------------------- orders

    def create_order(self, manifest: OrderManifest) -> CreatedOrder:
        body = self._order_body(manifest)
        try:
            resp = self._with_retries("PUT", "/api/Order", body=body)
        except WmsValidationError as exc:
            existing = self._existing_from_refusal(manifest, exc)
            if existing is None:
                raise
            return existing
        data = self._json(resp)
        result = data[0] if isinstance(data, list) and data else data
        if not isinstance(result, dict):
            raise WmsError(f"PUT /api/Order {manifest.order_number}: unexpected response {data!r:.200}")
        if result.get("Success") is False:
            refusal = WmsValidationError(
                str(result.get("Message") or "refused"), status_code=resp.status_code, body=result
            )
            existing = self._existing_from_refusal(manifest, refusal)
            if existing is None:
                raise WmsValidationError(
                    f"PUT /api/Order {manifest.order_number}: {refusal}",
                    status_code=resp.status_code,
                    body=result,
                )
            return existing
        raw = self._status_name(result)
        try:
            order_id = _id(result, "OrderId", "create result ")
        except _Bad as exc:
            raise WmsError(f"PUT /api/Order {manifest.order_number}: {exc}") from None
        self._known_orders[order_id] = True
        return CreatedOrder(
            order_id=order_id,
            order_number=str(result.get("OrderNumber") or manifest.order_number),
            created=True,
            raw_status=raw,
            status=MINTSOFT_STATUS_MAP.get(_status_key(raw)) if raw else None,
        )

    def _order_body(self, m: OrderManifest) -> dict[str, Any]:
        if not m.warehouse_id.isdigit():
            raise ValueError(f"order {m.order_number}: warehouse_id {m.warehouse_id!r} is not a Mintsoft id")
        items = []
        for i, line in enumerate(m.lines):
            if line.quantity != line.quantity.to_integral_value():
                raise ValueError(
                    f"order {m.order_number}: lines[{i}].quantity {line.quantity} is not whole WMS units"
                )
            items.append({"SKU": line.sku, "Quantity": int(line.quantity), "UnitPrice": line.unit_price})
        body: dict[str, Any] = {
            "OrderNumber": m.order_number,
            "ExternalOrderReference": m.external_reference or m.order_number,
            "WarehouseId": int(m.warehouse_id),
            "CourierService": m.courier_service,
            "Currency": m.currency,
            "FirstName": m.first_name,
            "LastName": m.last_name,
            "CompanyName": m.company_name,
            "Address1": m.address_1,
            "Address2": m.address_2,
            "Town": m.town,
            "County": m.county,
            "PostCode": m.postcode,
            "Country": m.country,
            "Email": m.email,
            "Phone": m.phone,
            "Channel": m.channel,
            "DeliveryNotes": m.delivery_notes,
            "RequiredDespatchDate": m.required_despatch_date,
            "OrderValue": sum((line.quantity * line.unit_price for line in m.lines), Decimal(0)),
            "OrderItems": items,
        }
        if self.config.client_id is not None:
            body["ClientId"] = self.config.client_id
        return {k: v for k, v in body.items() if v is not None}

    def _existing_from_refusal(self, m: OrderManifest, exc: WmsValidationError) -> CreatedOrder | None:
        """A duplicate refusal (409, or a 400 saying it exists) for our order number: it is already there."""
        text = str(exc).lower()
        if exc.status_code != 409 and "already exist" not in text and "duplicate" not in text:
            return None
        matches = self.find_orders(m.order_number)
        if not matches:
            # Refused as a duplicate, yet no order carries our number: the clash is on the external
            # reference of another order, which is a real conflict, not a repeat.
            raise WmsValidationError(
                f"order {m.order_number}: refused as a duplicate, yet no WMS order has that OrderNumber: "
                f"{exc}",
                status_code=exc.status_code,
                body=exc.body,
            ) from exc
        first = min(matches, key=lambda o: (o.part or 1, int(o.order_id)))
        return CreatedOrder(
            order_id=first.order_id,
            order_number=first.order_number,
            created=False,
            status=first.status,
            raw_status=first.raw_status,
        )

    def find_orders(self, order_number: str) -> list[WmsOrder]:
        """All WMS orders (every part) with this OrderNumber."""
        rows = self._get_json("/api/Order/Search", {"OrderNumber": order_number}) or []
        if isinstance(rows, dict):
            rows = [rows]
        found = []
        for row in rows:
            try:
                order = self._order(row, [False])
            except _Bad as exc:
                raise WmsError(f"GET /api/Order/Search {order_number}: {exc}") from None
            if order.order_number == order_number:
                found.append(order)
        return found

    def get_order(self, order_id: str) -> WmsOrder:
        row = self._get_json(f"/api/Order/{order_id}")
        try:
            return self._order(row, [False])
        except _Bad as exc:
            raise WmsError(f"GET /api/Order/{order_id}: {exc}") from None

    def cancel_order(self, order_id: str) -> None:
        try:
            # Mintsoft documents the action as a GET; it is retried like any call.
            data = self._json(self._with_retries("GET", f"/api/Order/{order_id}/Cancel"))
        except WmsValidationError:
            # A repeat, or a retry after a lost response, meets the order already cancelled: done.
            if self.get_order(order_id).status is OrderStatus.CANCELLED:
                return
            raise
        if isinstance(data, dict) and data.get("Success") is False:
            raise WmsValidationError(
                f"cancel order {order_id}: {data.get('Message') or 'refused'}", body=data
            )
        self._known_orders[order_id] = True

    def _status_name(self, row: Mapping[str, Any]) -> str | None:
        name = row.get("OrderStatus")
        if isinstance(name, str) and name.strip():
            return name.strip()
        sid = row.get("OrderStatusId")
        if sid is None:
            return None
        try:
            return self.statuses().get(int(sid))
        except (TypeError, ValueError):
            return None

    def _order(self, row: Any, refreshed: list[bool]) -> WmsOrder:
        if not isinstance(row, dict):
            raise _Bad("order: not an object")
        order_id = _id(row, "ID")
        where = f"order {order_id} "
        raw = self._status_name(row)
        if raw is None:
            raise _Bad(f"{where}OrderStatus: missing")
        status = MINTSOFT_STATUS_MAP.get(_status_key(raw))
        if status is None:
            raise _Bad(f"{where}OrderStatus: {raw!r} has no canonical mapping")
        updated_at = _time(row, "LastUpdated", where)
        lines = []
        for i, item in enumerate(row.get("OrderItems") or []):
            at = f"{where}OrderItems[{i}]."
            sku = _text(item, "SKU", at)
            self._check_sku(sku, at, refreshed)
            lines.append(
                OrderLine(
                    sku=sku,
                    quantity=_qty(item, "Quantity", at),
                    allocated=_qty(item, "Allocated", at, default=Decimal(0)),
                    back_ordered=_qty(item, "OnBackOrder", at, default=Decimal(0)),
                    line_id=_opt_id(item, "ID", at),
                )
            )
        return WmsOrder(
            vendor=VENDOR,
            order_id=order_id,
            order_number=_text(row, "OrderNumber", where),
            external_reference=_opt_text(row, "ExternalOrderReference"),
            status=status,
            raw_status=raw,
            updated_at=updated_at,
            warehouse_id=_opt_id(row, "WarehouseId", where),
            lines=tuple(lines),
            despatched_at=_opt_time(row, "DespatchDate", where),
            tracking_number=_opt_text(row, "TrackingNumber"),
            part=int(row["Part"]) if row.get("Part") else None,
            number_of_parts=int(row["NumberOfParts"]) if row.get("NumberOfParts") else None,
            dedupe_key=WmsOrder.key_for(VENDOR, order_id, raw, updated_at),
        )

    def _quarantine(
        self, source: str, row: Any, reason: str, key_fields: tuple[str, ...]
    ) -> QuarantinedRecord:
        parts = [row.get(f) for f in key_fields] if isinstance(row, dict) else []
        key = make_dedupe_key(VENDOR, "quarantine:" + source, *parts, reason) if any(parts) else None
        return QuarantinedRecord(vendor=VENDOR, source=source, payload=row, reason=reason, dedupe_key=key)

    def _since(self, stream: str, cursor: str | None) -> tuple[datetime | None, datetime | None]:
        """(stored high-water mark, the instant to query from after the lookback)."""
        mark = _read_time_cursor(stream, cursor)
        if mark is None:
            return None, None
        return mark, mark - timedelta(seconds=self.config.lookback_seconds)

    def orders_changed_since(self, cursor: str | None) -> Batch[WmsOrder]:
        mark, since = self._since("orders", cursor)
        source = "GET /api/Order/List"
        params = {"SinceLastUpdated": jsonutil.iso_z(since) if since else None, "IncludeOrderItems": "true"}
        records, quarantined, refreshed = [], [], [False]
        for rows in self._pages("/api/Order/List", params):
            for row in rows:
                try:
                    order = self._order(row, refreshed)
                    self._require_order(order.order_id, f"order {order.order_id} ID")
                except _Bad as exc:
                    quarantined.append(self._quarantine(source, row, str(exc), ("ID", "LastUpdated")))
                    continue
                records.append(order)
        # Several copies of one order in a read (repeats, stale copies) fold to its most advanced state.
        folded = fold_orders(dedupe(records))
        high = max((o.updated_at for o in records), default=None)
        return Batch[WmsOrder](
            records=sorted(folded.values(), key=lambda o: (o.updated_at, int(o.order_id))),
            quarantined=dedupe_quarantine(quarantined),
            next_cursor=_time_cursor("orders", max(filter(None, (mark, high)))) if (mark or high) else None,
        )

    def despatches_since(self, cursor: str | None) -> Batch[DespatchEvent]:
        mark, since = self._since("despatches", cursor)
        source = "GET /api/Order/List?SinceDespatchDate"
        params = {"SinceDespatchDate": jsonutil.iso_z(since) if since else None, "IncludeOrderItems": "true"}
        if since is None:
            # No cursor: all despatched orders ever. Mintsoft needs some filter; the epoch is "everything".
            params["SinceDespatchDate"] = "2000-01-01T00:00:00.000Z"
        events: list[DespatchEvent] = []
        quarantined: list[QuarantinedRecord] = []
        high: datetime | None = None
        refreshed = [False]
        for rows in self._pages("/api/Order/List", params):
            for row in rows:
                try:
                    order = self._order(row, refreshed)
                    if order.status != OrderStatus.DESPATCHED:
                        continue  # e.g. a cancelled part; only shipped goods are despatches
                    self._require_order(order.order_id, f"order {order.order_id} ID")
                    new = self._despatch_events(order, row, refreshed)
                except _Bad as exc:
                    quarantined.append(self._quarantine(source, row, str(exc), ("ID", "DespatchDate")))
                    continue
                events.extend(new)
                high = max(filter(None, (high, order.despatched_at)), default=None)
        return Batch[DespatchEvent](
            records=sorted(
                dedupe(events), key=lambda e: (e.despatched_at, int(e.order_id), e.shipment_id or "")
            ),
            quarantined=dedupe_quarantine(quarantined),
            next_cursor=_time_cursor("despatches", max(filter(None, (mark, high))))
            if (mark or high)
            else None,
        )

    def _despatch_events(
        self, order: WmsOrder, row: Mapping[str, Any], refreshed: list[bool]
    ) -> list[DespatchEvent]:
        where = f"order {order.order_id} "
        if order.despatched_at is None:
            raise _Bad(f"{where}DespatchDate: missing on a despatched order")
        shipments = row.get("Shipments")
        if shipments is None:
            shipments = self._get_json(f"/api/Order/{order.order_id}/Shipments") or []
        # An order may mix warehouses line by line; a parcel line takes its order line's warehouse.
        line_wh: dict[str, str | None] = {}
        ordered: dict[str, Decimal] = {}
        for j, item in enumerate(row.get("OrderItems") or []):
            sku = _text(item, "SKU", f"{where}OrderItems[{j}].")
            line_wh.setdefault(sku, _opt_id(item, "WarehouseId", f"{where}OrderItems[{j}]."))
            ordered[sku] = ordered.get(sku, Decimal(0)) + _qty(item, "Quantity", f"{where}OrderItems[{j}].")
        shipped: dict[str, Decimal] = {}
        events = []
        for i, ship in enumerate(shipments):
            at = f"{where}Shipments[{i}]."
            lines = []
            for j, item in enumerate(_get(ship, "Items", at)):
                lat = f"{at}Items[{j}]."
                sku = _text(item, "SKU", lat)
                self._check_sku(sku, lat, refreshed)
                qty = _qty(item, "Quantity", lat)
                shipped[sku] = shipped.get(sku, Decimal(0)) + qty
                if ordered and shipped[sku] > ordered.get(sku, Decimal(0)):
                    raise _Bad(
                        f"{lat}Quantity: parcels ship {shipped[sku]} of {sku}, the order has "
                        f"{ordered.get(sku, Decimal(0))}"
                    )
                wh = _opt_id(item, "WarehouseId", lat) or line_wh.get(sku) or order.warehouse_id
                if qty > 0:
                    lines.append(DespatchLine(sku=sku, quantity=qty, warehouse_id=wh))
            if not lines:
                continue
            shipment_id = _opt_id(ship, "ID", at) or _opt_text(ship, "Number")
            tracking = _opt_text(ship, "TrackingNumber") or order.tracking_number
            shipped_at = _opt_time(ship, "ShipmentDate", at) or order.despatched_at
            events.append(self._despatch(order, row, shipment_id, tracking, shipped_at, lines))
        if not events:
            # No parcel detail: the order's despatched quantities are one event.
            lines = []
            for j, item in enumerate(row.get("OrderItems") or []):
                lat = f"{where}OrderItems[{j}]."
                qty = _qty(item, "QuantityDespatched", lat, default=_qty(item, "Quantity", lat))
                if qty > 0:
                    lines.append(
                        DespatchLine(
                            sku=_text(item, "SKU", lat),
                            quantity=qty,
                            warehouse_id=_opt_id(item, "WarehouseId", lat) or order.warehouse_id,
                        )
                    )
            if not lines:
                raise _Bad(f"{where}OrderItems: despatched order with nothing despatched")
            events.append(self._despatch(order, row, None, order.tracking_number, order.despatched_at, lines))
        return events

    def _despatch(
        self,
        order: WmsOrder,
        row: Mapping[str, Any],
        shipment_id: str | None,
        tracking: str | None,
        shipped_at: datetime,
        lines: list[DespatchLine],
    ) -> DespatchEvent:
        return DespatchEvent(
            vendor=VENDOR,
            order_id=order.order_id,
            order_number=order.order_number,
            external_reference=order.external_reference,
            shipment_id=shipment_id,
            tracking_number=tracking,
            courier=_opt_text(row, "CourierServiceName"),
            despatched_at=shipped_at,
            lines=tuple(lines),
            raw_status=order.raw_status,
            part=order.part,
            number_of_parts=order.number_of_parts,
            dedupe_key=DespatchEvent.key_for(
                VENDOR, order.order_id, shipment_id, tracking, shipped_at, lines
            ),
        )

    # -------------------------------------------------------------------------------- stock

    def stock_snapshot(self) -> Batch[StockPosition]:
        source = "GET /api/Product/StockLevels"
        as_of = utc(self._now())
        records: list[StockPosition] = []
        quarantined: list[QuarantinedRecord] = []
        refreshed = [False]
        for rows in self._pages("/api/Product/StockLevels", {"Breakdown": "true"}):
            for row in rows:
                try:
                    records.append(self._position(row, as_of, refreshed))
                except _Bad as exc:
                    quarantined.append(self._quarantine(source, row, str(exc), ("SKU", "WarehouseId")))
        return Batch[StockPosition](records=dedupe(records), quarantined=dedupe_quarantine(quarantined))

    def _position(self, row: Any, as_of: datetime, refreshed: list[bool]) -> StockPosition:
        sku = _text(row, "SKU", "stock level ")
        wh = _id(row, "WarehouseId", f"stock level {sku} ")
        where = f"stock level {sku}@{wh} "
        self._check_sku(sku, where, refreshed)
        breakdown = row.get("Breakdown") or []
        by_type: dict[str, Decimal] = {}
        for i, part in enumerate(breakdown):
            kind = _text(part, "Type", f"{where}Breakdown[{i}].").upper()
            by_type[kind] = by_type.get(kind, Decimal(0)) + _qty(part, "Quantity", f"{where}Breakdown[{i}].")
        # TotalStockLevel excludes quarantine; fall back to the sellable breakdown where it is absent.
        if row.get("TotalStockLevel") is not None:
            physical = _qty(row, "TotalStockLevel", where)
        elif "SELLABLE" in by_type:
            physical = by_type["SELLABLE"]
        else:
            raise _Bad(f"{where}TotalStockLevel: missing")
        allocated = _qty(row, "Allocated", where, default=Decimal(0))
        free = (
            _qty(row, "Available", where, signed=True)
            if row.get("Available") is not None
            else physical - allocated
        )
        quarantine = _qty(row, "InQuarantine", where, default=by_type.get("QUARANTINE", Decimal(0)))
        inbound = _qty(row, "OnOrder", where, default=Decimal(0))
        updated = _opt_time(row, "LastUpdated", where)
        return StockPosition(
            vendor=VENDOR,
            sku=sku,
            warehouse_id=wh,
            physical=physical,
            allocated=allocated,
            free=free,
            quarantine=quarantine,
            inbound=inbound,
            as_of=as_of,
            dedupe_key=make_dedupe_key(
                VENDOR, "stock", sku, wh, physical, allocated, quarantine, inbound, updated
            ),
        )

    def stock_movements_since(self, cursor: str | None) -> Batch[StockMovement]:
        last_id = _read_id_cursor("movements", cursor)
        source = "GET /api/Product/StockFlow"
        records: list[StockMovement] = []
        quarantined: list[QuarantinedRecord] = []
        high = last_id
        refreshed = [False]
        for rows in self._pages("/api/Product/StockFlow", {"SinceId": last_id}):
            for row in rows:
                try:
                    move = self._movement(row, refreshed)
                except _Bad as exc:
                    quarantined.append(self._quarantine(source, row, str(exc), ("ID", "Date")))
                    continue
                records.append(move)
                high = max(high, int(move.movement_id or 0))
        return Batch[StockMovement](
            records=sorted(dedupe(records), key=lambda m: int(m.movement_id or 0)),
            quarantined=dedupe_quarantine(quarantined),
            next_cursor=_id_cursor("movements", high),
        )

    def _movement(self, row: Any, refreshed: list[bool]) -> StockMovement:
        mid = _id(row, "ID", "stock flow ")
        where = f"stock flow {mid} "
        sku = _text(row, "SKU", where)
        self._check_sku(sku, where, refreshed)
        product_id = _opt_id(row, "ProductId", where)
        if product_id and self._product_skus.get(product_id, sku) != sku:
            raise _Bad(f"{where}ProductId: {product_id} is {self._product_skus[product_id]!r}, not {sku!r}")
        flow = _text(row, "Flow", where)
        size = _qty(row, "Quantity", where)
        level_change = _qty(row, "LevelChange", where, signed=True, default=Decimal(0))
        quarantine_change = _qty(row, "QuarantineChange", where, signed=True, default=Decimal(0))
        if abs(level_change) > size or abs(quarantine_change) > size:
            raise _Bad(f"{where}LevelChange: larger than the movement Quantity {size}")
        kind = FLOW_KIND_MAP.get(_status_key(flow), MovementKind.OTHER)
        if kind in (MovementKind.ADJUSTMENT_OUT, MovementKind.ADJUSTMENT_IN):
            kind = MovementKind.ADJUSTMENT_IN if level_change > 0 else MovementKind.ADJUSTMENT_OUT
        order_id = _opt_id(row, "OrderId", where)
        if order_id:
            self._require_order(order_id, f"{where}OrderId")
        occurred = _time(row, "Date", where)
        return StockMovement(
            vendor=VENDOR,
            movement_id=mid,
            sku=sku,
            warehouse_id=_id(row, "WarehouseId", where),
            quantity=level_change,
            quarantine_quantity=quarantine_change,
            kind=kind,
            raw_action=flow,
            reason=_opt_text(row, "Reason") or _opt_text(row, "Comment"),
            order_id=order_id,
            asn_id=_opt_id(row, "ASNId", where),
            return_id=_opt_id(row, "ReturnId", where),
            occurred_at=occurred,
            dedupe_key=make_dedupe_key(VENDOR, "movement", mid),
        )

    # ------------------------------------------------------------------------ returns, ASNs

    def returns_since(self, cursor: str | None) -> Batch[ReturnEvent]:
        mark, since = self._since("returns", cursor)
        source = "GET /api/Return/SearchByDate"
        params = {"FromDate": jsonutil.iso_z(since) if since else "2000-01-01T00:00:00.000Z"}
        records: list[ReturnEvent] = []
        quarantined: list[QuarantinedRecord] = []
        high: datetime | None = None
        refreshed = [False]
        for rows in self._pages("/api/Return/SearchByDate", params):
            for row in rows:
                try:
                    events, updated = self._return_events(row, refreshed)
                except _Bad as exc:
                    quarantined.append(self._quarantine(source, row, str(exc), ("ID", "LastUpdated")))
                    continue
                records.extend(events)
                high = max(filter(None, (high, updated)), default=None)
        return Batch[ReturnEvent](
            records=dedupe(records),
            quarantined=dedupe_quarantine(quarantined),
            next_cursor=_time_cursor("returns", max(filter(None, (mark, high)))) if (mark or high) else None,
        )

    def _return_events(self, row: Any, refreshed: list[bool]) -> tuple[list[ReturnEvent], datetime]:
        rid = _id(row, "ID", "return ")
        where = f"return {rid} "
        order_id = _id(row, "OrderId", where)
        self._require_order(order_id, f"{where}OrderId")
        updated = _time(row, "LastUpdated", where)
        confirmed = bool(row.get("Confirmed"))
        returned_at = (_opt_time(row, "ConfirmedDate", where) if confirmed else None) or _time(
            row, "CreatedDate", where
        )
        items = row.get("Items")
        if items is None:
            items = self._get_json(f"/api/Return/{rid}/Items") or []
        events = []
        for i, item in enumerate(items):
            at = f"{where}Items[{i}]."
            sku = _text(item, "SKU", at)
            self._check_sku(sku, at, refreshed)
            qty = _qty(item, "Quantity", at)
            if qty == 0:
                raise _Bad(f"{at}Quantity: zero")
            action = _text(item, "StockAction", at)
            disposition = RETURN_ACTION_MAP.get(_status_key(action))
            if disposition is None:
                raise _Bad(f"{at}StockAction: {action!r} has no canonical mapping")
            if not confirmed:
                disposition = ReturnDisposition.PENDING  # graded but stock not yet moved
            item_id = _opt_id(item, "ID", at)
            events.append(
                ReturnEvent(
                    vendor=VENDOR,
                    return_id=rid,
                    order_id=order_id,
                    order_number=_opt_text(row, "OrderNumber"),
                    sku=sku,
                    quantity=qty,
                    warehouse_id=_opt_id(item, "WarehouseId", at) or _opt_id(row, "WarehouseId", where),
                    disposition=disposition,
                    raw_status=action,
                    confirmed=confirmed,
                    reason=_opt_text(item, "Comments") or _opt_text(item, "ReturnReasonId"),
                    returned_at=returned_at,
                    dedupe_key=make_dedupe_key(VENDOR, "return", rid, item_id, sku, qty, action, confirmed),
                )
            )
        return events, updated

    def receipts_since(self, cursor: str | None) -> Batch[Receipt]:
        mark, since = self._since("receipts", cursor)
        source = "GET /api/ASN/List"
        params = {"SinceLastUpdated": jsonutil.iso_z(since) if since else None}
        records: list[Receipt] = []
        quarantined: list[QuarantinedRecord] = []
        high: datetime | None = None
        refreshed = [False]
        for rows in self._pages("/api/ASN/List", params):
            for row in rows:
                try:
                    lines, updated = self._receipt_lines(row, refreshed)
                except _Bad as exc:
                    quarantined.append(self._quarantine(source, row, str(exc), ("ID", "LastUpdated")))
                    continue
                records.extend(lines)
                high = max(filter(None, (high, updated)), default=None)
        return Batch[Receipt](
            records=dedupe(records),
            quarantined=dedupe_quarantine(quarantined),
            next_cursor=_time_cursor("receipts", max(filter(None, (mark, high)))) if (mark or high) else None,
        )

    def _receipt_lines(self, row: Any, refreshed: list[bool]) -> tuple[list[Receipt], datetime]:
        asn_id = _id(row, "ID", "ASN ")
        where = f"ASN {asn_id} "
        raw = _text(row, "ASNStatus", where) if row.get("ASNStatus") else _text(row, "Status", where)
        status = ASN_STATUS_MAP.get(_status_key(raw))
        if status is None:
            raise _Bad(f"{where}Status: {raw!r} has no canonical mapping")
        updated = _time(row, "LastUpdated", where)
        wh = _id(row, "WarehouseId", where)
        items = row.get("Items")
        if items is None:
            items = (self._get_json(f"/api/ASN/{asn_id}") or {}).get("Items") or []
        lines = []
        for i, item in enumerate(items):
            at = f"{where}Items[{i}]."
            sku = _text(item, "SKU", at)
            self._check_sku(sku, at, refreshed)
            expected = _qty(item, "QuantityExpected", at)
            # Mintsoft spells it QuantityReceieved; accept the correct spelling too.
            received = _qty(
                item, "QuantityReceieved", at, default=_qty(item, "QuantityReceived", at, default=Decimal(0))
            )
            booked = _qty(item, "QuantityBooked", at, default=Decimal(0))
            line_id = _opt_id(item, "ID", at)
            lines.append(
                Receipt(
                    vendor=VENDOR,
                    asn_id=asn_id,
                    line_id=line_id,
                    reference=_opt_text(row, "POReference"),
                    sku=sku,
                    warehouse_id=wh,
                    quantity_expected=expected,
                    quantity_received=received,
                    quantity_booked=booked,
                    status=status,
                    raw_status=raw,
                    updated_at=updated,
                    dedupe_key=make_dedupe_key(VENDOR, "receipt", asn_id, line_id, sku, booked, raw),
                )
            )
        return lines, updated


def dedupe_quarantine(items: list[QuarantinedRecord]) -> list[QuarantinedRecord]:
    """Repeated junk is one problem, reported once; records without a key are all kept."""
    seen: set[str] = set()
    out = []
    for q in items:
        if q.dedupe_key is None or q.dedupe_key not in seen:
            if q.dedupe_key:
                seen.add(q.dedupe_key)
            out.append(q)
    return out


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (utc(when) - datetime.now(UTC)).total_seconds())
