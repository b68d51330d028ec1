"""Production Sage 200 (UK Professional/Standard) REST client over httpx.

What it guarantees, beyond making requests:
- Every failure is a typed `Sage200Error` naming the call and carrying Sage's message.
- Locks, 429, 5xx and timeouts are retried with exponential backoff and full jitter (tenacity),
  honouring Retry-After, within `max_attempts` and `deadline_seconds`.
- A write whose outcome is unknown is never re-sent blindly; despatch confirmations reconcile
  against the order lines first, so a retry cannot despatch twice.
- Bodies are decoded with `jsonutil.loads`, so money and quantities stay Decimal.
- Tokens and secrets are never logged.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200.auth import TokenManager, TokenStore
from sage_wms_pipeline.clients.sage200.config import Sage200Config
from sage_wms_pipeline.clients.sage200.errors import (
    AuthError,
    BusinessRuleError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitedError,
    RecordLockedError,
    Sage200Error,
    UnavailableError,
    is_lock_message,
    locked_record,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Json = Any
Params = Mapping[str, str | int]

# Transport failures where the request never reached the server: always safe to repeat.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Statuses after which a write may or may not have been applied.
_AMBIGUOUS_STATUSES = {500, 502, 504}
_RETRYABLE = (RecordLockedError, RateLimitedError, UnavailableError)


@dataclass
class ClientStats:
    """Counters a caller can put in Dagster metadata."""

    requests: int = 0
    retries: int = 0
    token_refreshes: int = 0  # tokens obtained from the token endpoint, by any grant
    by_status: dict[int, int] = field(default_factory=dict)
    sleeps: list[float] = field(default_factory=list)  # backoff waits taken, seconds
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, status: int) -> None:
        with self._lock:  # pages are fetched from several threads
            self.requests += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def retried(self, sleep: float) -> None:
        with self._lock:
            self.retries += 1
            self.sleeps.append(sleep)

    def refreshed(self, total: int) -> None:
        with self._lock:
            self.token_refreshes = max(self.token_refreshes, total)


@dataclass(frozen=True)
class StocktakeResult:
    """What `adjust_stock_via_stocktake` did: the stocktake and each adjustment Sage made."""

    stocktake_id: int
    stocktake_name: str
    status: str
    adjustments: list[dict[str, Any]]


@dataclass(frozen=True)
class StockCount:
    """One stocktake item: `quantity` is the counted level (kind="counted") or a signed change ("delta")."""

    product_id: int
    quantity: Decimal
    kind: Literal["counted", "delta"] = "counted"
    narrative: str | None = None


class Sage200Client:
    """`with Sage200Client(config) as sage: sage.list("products")`.

    Thread safe: `list()` itself fetches pages from a thread pool over one connection pool.
    """

    def __init__(self, config: Sage200Config, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.stats = ClientStats()
        self._http = httpx.Client(
            base_url=config.base_url,
            timeout=httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
            headers={"Accept": "application/json", "User-Agent": config.user_agent},
            limits=httpx.Limits(max_connections=max(10, config.max_concurrency * 2)),
            transport=transport,
        )
        self._tokens = TokenManager(
            self._http,
            token_url=config.token_url,
            client_id=config.client_id,
            client_secret=config.client_secret.get_secret_value(),
            bootstrap_refresh_token=config.refresh_token.get_secret_value(),
            store=TokenStore(config.token_store_path) if config.token_store_path else None,
            skew_seconds=config.token_refresh_skew_seconds,
        )
        self._site_id = config.site_id
        self._company_id = config.company_id
        self._site_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Sage200Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Sage200Client(base_url={self.config.base_url!r}, site_id={self._site_id!r})"

    def authorize(self, code: str, redirect_uri: str) -> None:
        """First-time setup: exchange a Sage ID authorisation code; the tokens go to the token store."""
        self._tokens.exchange_code(code, redirect_uri)

    @property
    def current_refresh_token(self) -> str:
        """The latest (rotated) refresh token, e.g. to hand to a secrets manager. Do not log it."""
        return self._tokens.refresh_token

    # -- reads -------------------------------------------------------------------------------------

    def sites(self) -> list[dict[str, Any]]:
        """GET /sites: the companies this token can reach (needs no X-Site/X-Company)."""
        body = self._call("GET", "sites", company_scoped=False, idempotent=True)
        return _as_rows(body, "sites")

    def get(self, path: str, params: Params | None = None) -> dict[str, Any]:
        """GET one record (e.g. `sop_orders/12`, params={"$expand": "lines"})."""
        body = self._call("GET", path, params=params, idempotent=True)
        if not isinstance(body, dict):
            raise Sage200Error(
                f"expected a JSON object from GET {path}, got {type(body).__name__}", path=path
            )
        return body

    def list(
        self,
        resource: str,
        *,
        filter: str | None = None,
        select: str | Sequence[str] | None = None,
        orderby: str = "id",
        expand: str | Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of a collection, paged with $orderby/$skip/$top.

        Pages after the first are fetched `max_concurrency` at a time; the read stops at the first
        short page. Rows come back in `orderby` order; a row seen twice (the collection shifted
        under offset paging) is kept once, by `id`.
        """
        size = page_size or self.config.page_size
        if not 1 <= size <= 5000:
            raise InvalidRequestError(
                f"page_size must be 1..5000 (Sage's $top limit), got {size}", path=resource
            )
        if not orderby:
            raise InvalidRequestError("Sage rejects $skip without $orderby; give orderby", path=resource)
        base: dict[str, str | int] = {"$orderby": orderby, "$top": size}
        if filter:
            base["$filter"] = filter
        if select:
            base["$select"] = select if isinstance(select, str) else ",".join(select)
        if expand:
            base["$expand"] = expand if isinstance(expand, str) else ",".join(expand)

        def page(index: int) -> list[dict[str, Any]]:
            body = self._call("GET", resource, params={**base, "$skip": index * size}, idempotent=True)
            return _as_rows(body, resource)

        first = page(0)
        pages = [first] if len(first) < size else self._fetch_pages(page, size, first)
        return _dedupe_by_id(row for rows in pages for row in rows)

    def list_updated_since(
        self,
        resource: str,
        cursor: datetime | None,
        *,
        filter: str | None = None,
        select: str | Sequence[str] | None = None,
        orderby: str = "id",
        expand: str | Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows changed after `cursor` (all rows when None), by `date_time_updated gt <UTC Z>`.

        The cursor is sent at millisecond precision; truncation can only re-read a row, never skip one.
        """
        clauses = [f"({filter})"] if filter else []
        if cursor is not None:
            clauses.append(f"date_time_updated gt {jsonutil.iso_z(cursor)}")
        return self.list(
            resource,
            filter=" and ".join(clauses) or None,
            select=select,
            orderby=orderby,
            expand=expand,
            page_size=page_size,
        )

    def _fetch_pages(
        self, page: Callable[[int], list[dict[str, Any]]], size: int, first: list[dict[str, Any]]
    ) -> list[list[dict[str, Any]]]:
        results: dict[int, list[dict[str, Any]]] = {0: first}
        last: int | None = None  # index of the first short page once seen
        next_index = 1
        pending: dict[Future[list[dict[str, Any]]], int] = {}
        with ThreadPoolExecutor(
            max_workers=self.config.max_concurrency, thread_name_prefix="sage-page"
        ) as pool:
            try:
                while True:
                    while len(pending) < self.config.max_concurrency and (last is None or next_index <= last):
                        pending[pool.submit(page, next_index)] = next_index
                        next_index += 1
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        rows = future.result()
                        results[index] = rows
                        if len(rows) < size and (last is None or index < last):
                            last = index
            finally:
                for future in pending:
                    future.cancel()
        assert last is not None
        return [results[i] for i in range(last + 1)]

    # -- writes ------------------------------------------------------------------------------------

    def post(self, path: str, body: Json, *, retry_unknown: bool = False) -> Json:
        """POST; retried only when Sage certainly did not apply it (lock, 429, 503, not connected).

        `retry_unknown=True` is for posts that are idempotent by nature (they only read or recompute).
        """
        return self._call("POST", path, body=body, idempotent=retry_unknown)

    def put(self, path: str, body: Json) -> Json:
        """PUT replaces fields with given values, so repeating it is safe."""
        return self._call("PUT", path, body=body, idempotent=True)

    def confirm_despatch(
        self,
        order_id: int,
        lines: Sequence[tuple[int, Decimal]],
        despatch_date: date | datetime | None = None,
        tracking: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Bring each order line's despatched quantity up to a target, via POST /sop_confirm_despatch.

        `lines` is `(order line id, TARGET cumulative despatched quantity in stock units)`, not the
        amount to add: Sage is read first and only `target - already despatched` is posted. That makes
        the call idempotent: after a timeout, dropped connection or 504 the order is read again and
        whatever did land is not posted twice; a later call with the same targets posts nothing.
        A line already past its target is reported in `over_target`, never reversed.

        Returns {"order_id", "document_no",
                 "applied": [{"id", "quantity"}]  what this call added, counting a posting whose answer
                                                  was lost but which Sage did apply,
                 "already_done": [line ids already at target when first read],
                 "over_target": [{"id", "target", "despatched"}],
                 "response": Sage's echo of the last posting, or None if nothing needed posting,
                 "attempts": int}.
        Raises `RecordLockedError` naming the document number when the order stays locked past the
        retry budget, `InvalidRequestError` for bad input (nothing posted), `BusinessRuleError` when
        Sage refuses (e.g. more than is allocated), `OutcomeUnknownError` if even the last attempt got
        no answer (call again with the same targets to settle it).
        """
        targets = _validate_despatch_input(order_id, lines)
        tracking_items = [{"sop_order_return_id": order_id, **tracking}] if tracking else None
        state: dict[str, Any] = {"attempts": 0, "document_no": None, "first": None}

        def attempt() -> dict[str, Any]:
            state["attempts"] += 1
            # one retry budget for the whole read-plan-post unit, so the read is not retried on its own
            order = self._call("GET", f"sop_orders/{order_id}", params={"$expand": "lines"}, retry=False)
            if not isinstance(order, dict):
                raise Sage200Error(f"expected an order object for sop_orders/{order_id}", path="sop_orders")
            state["document_no"] = order.get("document_no")
            plan = _plan_despatch(order, targets)
            if state["first"] is None:
                state["first"] = plan
            first: _DespatchPlan = state["first"]
            result: dict[str, Any] = {
                "order_id": order_id,
                "document_no": order.get("document_no"),
                # measured against the first read, so a lost-but-applied posting still counts
                "applied": [item for item in first.items if item["id"] not in plan.quantities],
                "already_done": first.already_done,
                "over_target": plan.over_target,
                "response": None,
                "attempts": state["attempts"],
            }
            if not plan.items:
                return result
            body: dict[str, Any] = {"sop_order_return_id": order_id, "items": plan.items}
            if despatch_date is not None:
                body["despatch_receipt_date"] = _sage_datetime(despatch_date)
            if tracking_items:
                body["tracking_items"] = tracking_items
            try:
                result["response"] = self._call("POST", "sop_confirm_despatch", body=body, retry=False)
            except RecordLockedError as exc:
                raise _name_locked_order(exc, order) from exc
            result["applied"] = first.items
            return result

        try:
            return self._retrying(retry_unknown=True)(attempt)
        except OutcomeUnknownError as exc:
            raise OutcomeUnknownError(
                f"despatch of order {state['document_no'] or order_id} still unconfirmed after "
                f"{state['attempts']} attempts; calling confirm_despatch again with the same targets is safe",
                status=exc.status,
                method=exc.method,
                path=exc.path,
                sage_message=exc.sage_message,
            ) from exc

    # -- core --------------------------------------------------------------------------------------

    def _retrying(self, *, retry_unknown: bool = False) -> Callable[[Callable[[], T]], T]:
        cfg = self.config
        jitter = wait_random_exponential(multiplier=cfg.backoff_initial_seconds, max=cfg.backoff_max_seconds)
        kinds: tuple[type[Exception], ...] = _RETRYABLE + ((OutcomeUnknownError,) if retry_unknown else ())

        def wait_for(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hint = getattr(exc, "retry_after", None)
            delay = jitter(state)
            return max(delay, float(hint)) if hint is not None else delay

        def before_sleep(state: RetryCallState) -> None:
            self.stats.retried(state.upcoming_sleep)
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "Sage 200 attempt %d failed (%s); retrying in %.2fs",
                state.attempt_number,
                exc,
                state.upcoming_sleep,
            )

        retrying = Retrying(
            stop=stop_after_attempt(cfg.max_attempts) | stop_before_delay(cfg.deadline_seconds),
            wait=wait_for,
            retry=retry_if_exception(lambda e: isinstance(e, kinds)),
            before_sleep=before_sleep,
            reraise=True,
        )
        return lambda fn: retrying(fn)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Json = None,
        idempotent: bool | None = None,
        company_scoped: bool = True,
        retry: bool = True,
    ) -> Json:
        safe = method in ("GET", "PUT", "DELETE") if idempotent is None else idempotent
        if company_scoped:
            self._site()  # resolve X-Site/X-Company first, so its retries do not nest inside this call's

        def once() -> Json:
            return self._send(
                method, path, params=params, body=body, idempotent=safe, company_scoped=company_scoped
            )

        return self._retrying()(once) if retry else once()

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None,
        body: Json,
        idempotent: bool,
        company_scoped: bool,
    ) -> Json:
        path = path.lstrip("/")
        content = jsonutil.dumps(body).encode("utf-8") if body is not None else None
        for auth_attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._token()}"}
            if company_scoped:
                site_id, company_id = self._site()
                headers |= {"X-Site": site_id, "X-Company": str(company_id)}
            if content is not None:
                headers["Content-Type"] = "application/json"
            try:
                resp = self._http.request(method, path, params=params, content=content, headers=headers)
            except httpx.TransportError as exc:
                raise _transport_error(exc, method, path, idempotent) from exc
            self.stats.count(resp.status_code)
            if resp.status_code == 401 and auth_attempt == 1:
                # Expired or revoked early: one refresh, one retry.
                self._tokens.invalidate(headers["Authorization"].removeprefix("Bearer "))
                continue
            if resp.is_success:
                log.debug("Sage 200 %s %s -> %d", method, path, resp.status_code)
                return _decode(resp, method, path)
            raise _status_error(resp, method, path, idempotent)
        raise AssertionError("unreachable")

    def _token(self) -> str:
        token = self._tokens.access_token()
        self.stats.refreshed(self._tokens.refresh_count)
        return token

    def _site(self) -> tuple[str, int]:
        if self._site_id is not None and self._company_id is not None:
            return self._site_id, self._company_id
        with self._site_lock:
            if self._site_id is None or self._company_id is None:
                self._site_id, self._company_id = _choose_site(self.sites(), self._site_id, self._company_id)
            return self._site_id, self._company_id

    # -- stocktake ---------------------------------------------------------------------------------

    def adjust_stock_via_stocktake(
        self,
        warehouse_id: int,
        items: Iterable[StockCount],
        *,
        stocktake_name: str | None = None,
        narrative: str | None = None,
    ) -> StocktakeResult:
        """Set stock levels the only way Sage's API allows: a stocktake for the given items.

        Runs new items -> create stocktake (selected items only) -> enter values -> amend each count
        sheet item -> view adjustments -> approve and complete, and returns the adjustments Sage
        made (actual - recorded at count time). A "delta" item is entered as recorded + delta, so
        movements between creation and completion are not overwritten.

        Input is checked against the warehouse before anything is created (unknown product,
        non-stock product, negative result): `InvalidRequestError` naming the product and field.
        The stocktake name is unique per call, so a create whose answer was lost is found again
        by name instead of being created twice; a lost approve answer is settled by reading the
        stocktake's status.
        """
        counts = _validate_counts(warehouse_id, items)
        holdings = {h["product_id"]: h for h in self.list(f"warehouses/{warehouse_id}/warehouse_holdings")}
        candidates = self.post("stocktake_new_items", {"warehouse_id": warehouse_id}, retry_unknown=True)
        countable = {c["warehouse_holding_id"]: c for c in (candidates or {}).get("stocktake_items") or []}
        chosen: dict[int, dict[str, Any]] = {}  # product_id -> new-items row
        for product_id, count in counts.items():
            holding = holdings.get(product_id)
            if holding is None:
                raise InvalidRequestError(
                    f"stocktake item product_id={product_id}: warehouse {warehouse_id} holds no such product",
                    path="stocktakes",
                )
            row = countable.get(holding["id"])
            if row is None:
                raise InvalidRequestError(
                    f"stocktake item product_id={product_id}: not a stock item Sage can count "
                    f"in warehouse {warehouse_id}",
                    path="stocktakes",
                )
            in_stock = Decimal(str(holding.get("quantity_in_stock", row.get("quantity_in_stock", 0))))
            if count.kind == "delta" and in_stock + count.quantity < 0:
                raise InvalidRequestError(
                    f"stocktake item product_id={product_id} ({row.get('item_code')}): quantity delta "
                    f"{count.quantity} would take stock of {in_stock} below zero",
                    path="stocktakes",
                )
            chosen[product_id] = row
        by_code = {row["item_code"]: pid for pid, row in chosen.items()}
        name = (stocktake_name or f"API {uuid.uuid4().hex[:16]}")[:60]

        stocktake = self._create_stocktake(warehouse_id, name, list(chosen.values()))
        stocktake_id = int(stocktake["id"])
        sheet = self.post("stocktake_enter_values", {"id": stocktake_id}, retry_unknown=True)
        sheet_items = [
            i for i in sheet.get("stocktake_count_sheet_items") or [] if i.get("item_code") in by_code
        ]
        missing = set(by_code) - {i["item_code"] for i in sheet_items}
        if missing:
            raise Sage200Error(
                f"stocktake {stocktake_id}: Sage's count sheet lacks {sorted(missing)}; "
                "left open, uncompleted",
                path="stocktake_enter_values",
            )
        for item in sheet_items:
            product_id = by_code[item["item_code"]]
            count = counts[product_id]
            recorded = Decimal(str(item.get("recorded_quantity_in_stock") or 0))
            actual = count.quantity if count.kind == "counted" else recorded + count.quantity
            if actual < 0:
                raise InvalidRequestError(
                    f"stocktake {stocktake_id} item product_id={product_id}: delta {count.quantity} on "
                    f"recorded {recorded} gives a negative count; the stocktake is left open, uncompleted",
                    path=f"stocktake_count_sheet_items/{item['id']}",
                )
            body: dict[str, Any] = {"actual_quantity_in_stock": actual, "actual_quantity_entered": True}
            if count.narrative:
                body["discrepancy_narrative"] = count.narrative
            self.put(f"stocktake_count_sheet_items/{item['id']}", body)
        review = self.post("stocktake_view_adjustments", {"id": stocktake_id}, retry_unknown=True)
        final = self._approve_stocktake(stocktake_id, narrative)
        adjustments = []
        for item in review.get("stocktake_count_sheet_items") or []:
            recorded = Decimal(str(item.get("recorded_quantity_in_stock") or 0))
            actual = Decimal(str(item.get("actual_quantity_in_stock") or 0))
            if item.get("actual_quantity_entered") is False or actual == recorded:
                continue
            adjustments.append(
                {
                    "count_sheet_item_id": item.get("id"),
                    "product_id": by_code.get(item.get("item_code")),
                    "item_code": item.get("item_code"),
                    "recorded_quantity": recorded,
                    "actual_quantity": actual,
                    "adjustment": actual - recorded,
                    "costing_method_type": item.get("costing_method_type"),
                    "discrepancy_narrative": item.get("discrepancy_narrative"),
                }
            )
        return StocktakeResult(
            stocktake_id=stocktake_id,
            stocktake_name=name,
            status=str(final.get("stocktake_status")),
            adjustments=adjustments,
        )

    def _create_stocktake(self, warehouse_id: int, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        body = {
            "warehouse_id": warehouse_id,
            "stocktake_name": name,
            "show_expected_quantities": True,  # recorded quantities are needed to apply deltas
            "stocktake_items": [
                {
                    "warehouse_holding_id": r["warehouse_holding_id"],
                    "item_code": r["item_code"],
                    "is_selected": True,
                }
                for r in rows
            ],
        }

        def find() -> dict[str, Any] | None:
            found = self.list(
                "stocktakes",
                filter=f"stocktake_name eq {odata_quote(name)} and warehouse_id eq {warehouse_id}",
            )
            return found[0] if len(found) == 1 else None

        return self._settled_write(lambda: self._call("POST", "stocktakes", body=body, retry=False), find)

    def _approve_stocktake(self, stocktake_id: int, narrative: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": stocktake_id}
        if narrative:
            body["nominal_narrative"] = narrative

        def find() -> dict[str, Any] | None:
            current = self.get(f"stocktakes/{stocktake_id}")
            return current if current.get("stocktake_status") == "Complete" else None

        return self._settled_write(
            lambda: self._call("POST", "stocktake_approve_complete", body=body, retry=False), find
        )

    def _settled_write(self, action: Callable[[], T], settle: Callable[[], T | None]) -> T:
        """Run a non-idempotent write; when its outcome is unknown, `settle()` reads back and returns
        the result if it landed (else None, and the write is tried again within the retry budget)."""

        def attempt() -> T:
            try:
                return action()
            except OutcomeUnknownError:
                landed = settle()
                if landed is not None:
                    return landed
                raise

        return self._retrying(retry_unknown=True)(attempt)


# -- helpers ---------------------------------------------------------------------------------------


@dataclass
class _DespatchPlan:
    items: list[dict[str, Any]]
    already_done: list[int]
    over_target: list[dict[str, Any]]

    @property
    def quantities(self) -> dict[int, Decimal]:
        return {item["id"]: item["quantity"] for item in self.items}


def _validate_despatch_input(order_id: int, lines: Sequence[tuple[int, Decimal]]) -> dict[int, Decimal]:
    where = f"sop_orders/{order_id}"
    if not isinstance(order_id, int) or isinstance(order_id, bool) or order_id <= 0:
        raise InvalidRequestError(f"order_id must be a positive int, got {order_id!r}", path=where)
    if not lines:
        raise InvalidRequestError(f"order {order_id}: no lines to despatch", path=where)
    targets: dict[int, Decimal] = {}
    for entry in lines:
        try:
            line_id, quantity = entry
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"order {order_id}: each line must be (line_id, target quantity), got {entry!r}", path=where
            ) from None
        if not isinstance(line_id, int) or isinstance(line_id, bool):
            raise InvalidRequestError(
                f"order {order_id}: line id must be an int, got {line_id!r}", path=where
            )
        if line_id in targets:
            raise InvalidRequestError(f"order {order_id}, line {line_id}: given twice", path=where)
        if isinstance(quantity, int) and not isinstance(quantity, bool):
            quantity = Decimal(quantity)
        if not isinstance(quantity, Decimal) or not quantity.is_finite():
            # floats would put binary rounding into a stock movement
            raise InvalidRequestError(
                f"order {order_id}, line {line_id}: quantity must be a Decimal, got {quantity!r}", path=where
            )
        if quantity < 0:
            raise InvalidRequestError(
                f"order {order_id}, line {line_id}: target despatched quantity {quantity} is negative",
                path=where,
            )
        targets[line_id] = quantity
    return targets


def _line_despatched(line: Mapping[str, Any]) -> Decimal:
    value = line.get("stock_unit_despatch_receipt_quantity")
    if value is None:
        value = line.get("despatch_receipt_quantity")
    return Decimal(str(value)) if value is not None else Decimal(0)


def _line_quantity(line: Mapping[str, Any]) -> Decimal | None:
    value = line.get("stock_unit_line_quantity")
    if value is None:
        value = line.get("line_quantity")
    return Decimal(str(value)) if value is not None else None


def _plan_despatch(order: Mapping[str, Any], targets: Mapping[int, Decimal]) -> _DespatchPlan:
    doc = order.get("document_no") or order.get("id")
    by_id = {line.get("id"): line for line in order.get("lines") or []}
    plan = _DespatchPlan(items=[], already_done=[], over_target=[])
    for line_id, target in targets.items():
        line = by_id.get(line_id)
        if line is None:
            raise InvalidRequestError(
                f"order {doc}: line {line_id} is not a line of this order",
                path=f"sop_orders/{order.get('id')}",
            )
        ordered = _line_quantity(line)
        if ordered is not None and target > ordered:
            raise InvalidRequestError(
                f"order {doc}, line {line_id}: target despatched quantity {target} "
                f"exceeds line_quantity {ordered}",
                path=f"sop_orders/{order.get('id')}",
            )
        done = _line_despatched(line)
        if target > done:
            plan.items.append({"id": line_id, "quantity": target - done})
        elif target == done:
            plan.already_done.append(line_id)
        else:
            plan.over_target.append({"id": line_id, "target": target, "despatched": done})
    if plan.over_target:
        log.warning("order %s: lines already despatched past target: %s", doc, plan.over_target)
    return plan


def _name_locked_order(exc: RecordLockedError, order: Mapping[str, Any]) -> RecordLockedError:
    doc = order.get("document_no") or exc.record or str(order.get("id"))
    return RecordLockedError(
        f"sales order {doc} is locked by another user",
        record=doc,
        status=exc.status,
        method=exc.method,
        path=exc.path,
        sage_message=exc.sage_message,
    )


def _sage_datetime(value: date | datetime) -> str:
    # Sage rejects bare dates on some document fields; midnight UTC is what its own UI sends.
    if isinstance(value, datetime):
        return jsonutil.iso_z(value)
    return f"{value.isoformat()}T00:00:00Z"


def odata_quote(value: str) -> str:
    """A string literal for $filter: single quotes, inner quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def _validate_counts(warehouse_id: int, items: Iterable[StockCount]) -> dict[int, StockCount]:
    where = f"warehouses/{warehouse_id}"
    if not isinstance(warehouse_id, int) or isinstance(warehouse_id, bool) or warehouse_id <= 0:
        raise InvalidRequestError(f"warehouse_id must be a positive int, got {warehouse_id!r}", path=where)
    counts: dict[int, StockCount] = {}
    for i, item in enumerate(items):
        label = f"stocktake item {i}"
        if not isinstance(item, StockCount):
            raise InvalidRequestError(
                f"{label}: expected a StockCount, got {type(item).__name__}", path=where
            )
        if not isinstance(item.product_id, int) or isinstance(item.product_id, bool) or item.product_id <= 0:
            raise InvalidRequestError(f"{label}: product_id must be a positive int", path=where)
        label = f"stocktake item product_id={item.product_id}"
        if isinstance(item.quantity, int) and not isinstance(item.quantity, bool):
            item = replace(item, quantity=Decimal(item.quantity))  # JSON integers decode as int
        if not isinstance(item.quantity, Decimal) or not item.quantity.is_finite():
            raise InvalidRequestError(
                f"{label}: quantity must be a finite Decimal, got {item.quantity!r}", path=where
            )
        if item.kind not in ("counted", "delta"):
            raise InvalidRequestError(
                f"{label}: kind must be 'counted' or 'delta', got {item.kind!r}", path=where
            )
        if item.kind == "counted" and item.quantity < 0:
            raise InvalidRequestError(f"{label}: counted quantity {item.quantity} is negative", path=where)
        if item.product_id in counts:
            raise InvalidRequestError(f"{label}: given twice", path=where)
        counts[item.product_id] = item
    if not counts:
        raise InvalidRequestError(f"warehouse {warehouse_id}: no stocktake items given", path=where)
    return counts


def _choose_site(sites: list[dict[str, Any]], site_id: str | None, company_id: int | None) -> tuple[str, int]:
    matches = [
        s
        for s in sites
        if (site_id is None or str(s.get("site_id")) == site_id)
        and (company_id is None or s.get("company_id") == company_id)
    ]
    if len(matches) != 1:
        choices = ", ".join(
            f"{s.get('site_id')}/{s.get('company_id')} ({s.get('company_name')})" for s in sites
        )
        raise Sage200Error(
            f"cannot pick a Sage site: {len(matches)} of /sites match site_id={site_id} "
            f"company_id={company_id}; set both. "
            f"Available: {choices or 'none (is the API registration lost?)'}",
            path="sites",
        )
    return str(matches[0]["site_id"]), int(matches[0]["company_id"])


def _as_rows(body: Json, resource: str) -> list[dict[str, Any]]:
    # Sage documents a bare array; some gateways wrap it as {"value": [...]}
    if isinstance(body, dict) and isinstance(body.get("value"), list):
        body = body["value"]
    if not isinstance(body, list):
        raise Sage200Error(
            f"expected a JSON array from GET {resource}, got {type(body).__name__}", path=resource
        )
    return body


def _dedupe_by_id(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    out: list[dict[str, Any]] = []
    dropped = 0
    for row in rows:
        key = row.get("id") if isinstance(row, dict) else None
        if key is not None:
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
        out.append(row)
    if dropped:
        log.warning("dropped %d rows seen twice while paging (collection changed during the read)", dropped)
    return out


def _decode(resp: httpx.Response, method: str, path: str) -> Json:
    if not resp.content:
        return None
    try:
        return jsonutil.loads(resp.content)
    except ValueError as exc:
        raise Sage200Error(
            f"response is not JSON ({exc})", status=resp.status_code, method=method, path=path
        ) from exc


def _sage_message(resp: httpx.Response) -> str | None:
    """Sage's error text; its 400 body shape is not documented, so try the usual keys, then raw text."""
    if not resp.content:
        return None
    try:
        body = jsonutil.loads(resp.content)
    except ValueError:
        return resp.text.strip()[:2000] or None
    if isinstance(body, dict):
        for key in ("message", "Message", "error_description", "detail", "error", "errors", "ModelState"):
            value = body.get(key)
            if value:
                return value if isinstance(value, str) else jsonutil.dumps(value)
    if isinstance(body, list) and body:
        first = body[0]
        if isinstance(first, dict):
            return str(first.get("message") or first.get("Message") or jsonutil.dumps(first))
        return str(first)
    return jsonutil.dumps(body)[:2000]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())


def _status_error(resp: httpx.Response, method: str, path: str, idempotent: bool) -> Sage200Error:
    status = resp.status_code
    message = _sage_message(resp)
    kw: dict[str, Any] = {"status": status, "method": method, "path": path, "sage_message": message}
    if status == 401:
        return AuthError("not authorised (token, X-Site or X-Company rejected)", **kw)
    if status == 403:
        return ForbiddenError("the Sage user's role lacks access", **kw)
    if status == 404:
        return NotFoundError("not found", **kw)
    if status in (409, 423) or (status == 400 and is_lock_message(message)):
        return RecordLockedError("record in use by another user", record=locked_record(message), **kw)
    if status == 429:
        return RateLimitedError("rate limited", retry_after=_retry_after(resp), **kw)
    if status == 408:  # the server gave up waiting for the request: nothing was applied
        return UnavailableError("request timeout", retry_after=_retry_after(resp), **kw)
    if status >= 500:
        if status in _AMBIGUOUS_STATUSES and not idempotent:
            return OutcomeUnknownError(
                f"no definite answer ({status}); the write may have been applied", **kw
            )
        return UnavailableError("Sage unavailable", retry_after=_retry_after(resp), **kw)
    if 400 <= status < 500:
        return BusinessRuleError("Sage refused the request", **kw)
    return Sage200Error(f"unexpected status {status}", **kw)


def _transport_error(exc: httpx.TransportError, method: str, path: str, idempotent: bool) -> Sage200Error:
    what = type(exc).__name__
    if isinstance(exc, _NOT_SENT) or idempotent:
        return UnavailableError(f"{what}: {exc}".rstrip(": "), method=method, path=path)
    return OutcomeUnknownError(
        f"{what} after sending; the write may have been applied", method=method, path=path
    )
