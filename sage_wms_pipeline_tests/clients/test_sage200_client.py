"""The production Sage 200 client against the Sage 200 simulator, over real HTTP."""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.clients.sage200 import (
    AuthError,
    BusinessRuleError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitedError,
    RecordLockedError,
    Sage200Client,
    Sage200Config,
    StockCount,
    UnavailableError,
)
from sage_wms_pipeline_tests.conftest import Sandbox

API = "/uk/sage200extra/accounts/v1/"


def make_config(sandbox: Sandbox, tmp_path: Path, **overrides: Any) -> Sage200Config:
    values: dict[str, Any] = {
        "base_url": sandbox.sage_url + API,
        "token_url": sandbox.sage_url + "/oauth/token",
        "client_id": "sandbox",
        "client_secret": "sandbox",
        "refresh_token": "sandbox-refresh",
        "token_store_path": tmp_path / "sage-token.json",
        "timeout_seconds": 10,
        "max_attempts": 5,
        "deadline_seconds": 10,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    return Sage200Config(**(values | overrides))


@pytest.fixture
def sage(sandbox: Sandbox, tmp_path: Path) -> Iterator[Sage200Client]:
    with Sage200Client(make_config(sandbox, tmp_path)) as client:
        yield client


def admin(sandbox: Sandbox, path: str, body: object, method: str = "POST") -> Any:
    resp = httpx.request(
        method,
        sandbox.sage_url + path,
        content=jsonutil.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    resp.raise_for_status()
    return jsonutil.loads(resp.content)


def faults(sandbox: Sandbox, **knobs: Any) -> None:
    admin(sandbox, "/_sandbox/faults", knobs)


def order(sage: Sage200Client, document_no: str) -> dict[str, Any]:
    rows = sage.list("sop_orders", filter=f"document_no eq '{document_no}'", expand="lines")
    assert len(rows) == 1, document_no
    return rows[0]


def despatched(sage: Sage200Client, line_id: int) -> Decimal:
    return sage.get(f"sop_order_lines/{line_id}")["despatch_receipt_quantity"]


def standard_lines(o: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in o["lines"] if line["line_type"] == "EnumLineTypeStandard"]


# -- reads -----------------------------------------------------------------------------------------


def test_site_and_company_found_via_sites_when_not_configured(sage: Sage200Client) -> None:
    sites = sage.sites()
    assert len(sites) == 1
    warehouses = sage.list("warehouses")  # needs X-Site/X-Company, taken from /sites
    assert len(warehouses) == 3  # the demo scenario's warehouses
    assert sage._site() == (sites[0]["site_id"], sites[0]["company_id"])


class PeakTransport(httpx.HTTPTransport):
    """Real HTTP transport that records how many list requests were in flight at once."""

    def __init__(self, path_part: str) -> None:
        super().__init__()
        self.path_part = path_part
        self.in_flight = 0
        self.peak = 0
        self.requests = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        counted = self.path_part in request.url.path
        if counted:
            with self._lock:
                self.in_flight += 1
                self.requests += 1
                self.peak = max(self.peak, self.in_flight)
        try:
            return super().handle_request(request)
        finally:
            if counted:
                with self._lock:
                    self.in_flight -= 1


def test_list_pages_concurrently_in_order_without_duplicates(
    sandbox: Sandbox, tmp_path: Path, sage: Sage200Client
) -> None:
    reference = sage.list("warehouse_holdings", page_size=5000)
    assert len(reference) > 10  # demo data: enough rows for several pages of 5
    ids = [row["id"] for row in reference]
    assert ids == sorted(ids)

    faults(sandbox, slow_seconds="0.1")  # keeps pages in flight long enough to overlap
    transport = PeakTransport("warehouse_holdings")
    config = make_config(sandbox, tmp_path, page_size=5, max_concurrency=3)  # shares the token store
    with Sage200Client(config, transport=transport) as client:
        rows = client.list("warehouse_holdings")

    assert rows == reference
    assert len({row["id"] for row in rows}) == len(rows)
    assert transport.peak >= 2, "pages after the first were not fetched concurrently"
    pages = len(reference) // 5 + 1
    # stops at the first short page: at most the pages in flight when it came back are extra
    assert pages <= transport.requests <= pages + config.max_concurrency - 1


def test_list_exact_multiple_of_page_size_stops_at_empty_page(sage: Sage200Client) -> None:
    reference = sage.list("warehouse_holdings", page_size=5000)
    size = next(n for n in range(3, len(reference)) if len(reference) % n == 0)
    assert sage.list("warehouse_holdings", page_size=size) == reference
    with pytest.raises(InvalidRequestError, match="page_size"):
        sage.list("warehouse_holdings", page_size=5001)


def test_list_updated_since_returns_only_changed_rows(sage: Sage200Client) -> None:
    everything = sage.list_updated_since("sop_orders", None)
    assert len(everything) == len(sage.list("sop_orders"))
    cursor = max(datetime.fromisoformat(o["date_time_updated"]) for o in everything)
    assert sage.list_updated_since("sop_orders", cursor) == []

    target = order(sage, "SO0001001")
    line = standard_lines(target)[0]
    sage.confirm_despatch(target["id"], [(line["id"], Decimal(1))])

    changed = sage.list_updated_since("sop_orders", cursor)
    assert [o["document_no"] for o in changed] == ["SO0001001"]
    # an extra filter is combined with the cursor
    assert sage.list_updated_since("sop_orders", cursor, filter="document_no eq 'SO0001002'") == []
    lines = sage.list_updated_since("sop_orders", cursor, filter="document_no eq 'SO0001001'", expand="lines")
    assert lines[0]["lines"][0]["id"] == line["id"]


# -- error mapping ---------------------------------------------------------------------------------


def test_not_found_and_business_rule_errors_carry_call_and_message(sage: Sage200Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        sage.get("sop_orders/999999")
    assert (missing.value.status, missing.value.method, missing.value.path) == (
        404,
        "GET",
        "sop_orders/999999",
    )
    assert "999999" in (missing.value.sage_message or "")

    with pytest.raises(BusinessRuleError) as bad_query:
        sage.list("products", filter="no_such_field eq 1")
    assert bad_query.value.status == 400 and "no_such_field" in str(bad_query.value)

    on_hold = order(sage, "SO0001004")
    line = standard_lines(on_hold)[0]
    before = sage.stats.by_status.get(400, 0)
    with pytest.raises(BusinessRuleError) as refused:
        sage.confirm_despatch(on_hold["id"], [(line["id"], Decimal(1))])
    assert "on hold" in (refused.value.sage_message or "")
    assert refused.value.path == "sop_confirm_despatch"
    assert sage.stats.by_status[400] == before + 1, "a business-rule 400 must not be retried"
    assert despatched(sage, line["id"]) == 0


def test_wrong_site_is_auth_error_after_one_refresh(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox, tmp_path, site_id="not-the-site", company_id=1)
    with Sage200Client(config) as client, pytest.raises(AuthError) as err:
        client.get("sop_orders/1")
    assert err.value.status == 401
    assert client.stats.by_status[401] == 2  # the first 401 bought one refresh-and-retry
    assert client.stats.token_refreshes == 2


def test_bad_client_secret_is_auth_error(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox, tmp_path, client_secret="wrong")
    with Sage200Client(config) as client, pytest.raises(AuthError) as err:
        client.sites()
    assert err.value.status == 401 and "invalid_client" in (err.value.sage_message or "")


def test_forbidden_maps_to_forbidden_error(tmp_path: Path) -> None:
    # The simulator never answers 403 (a role without the module), so this one mapping uses a fake.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "a", "refresh_token": "r2", "expires_in": 3600})
        return httpx.Response(403, json={"message": "You do not have access to the Sales Ledger module."})

    config = Sage200Config(
        base_url="https://sage.invalid" + API,
        token_url="https://sage.invalid/oauth/token",
        client_id="c",
        client_secret="s",
        refresh_token="r1",
        site_id="s",
        company_id=1,
    )
    client = Sage200Client(config, transport=httpx.MockTransport(handler))
    with client, pytest.raises(ForbiddenError) as err:
        client.list("customers")
    assert err.value.status == 403 and "Sales Ledger" in (err.value.sage_message or "")
    assert client.stats.by_status == {403: 1}


def test_429_retried_honouring_retry_after_then_rate_limited(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox, tmp_path, max_attempts=2)
    with Sage200Client(config) as client:
        client.get("sop_orders/1")
        faults(sandbox, rate_429=1, retry_after_seconds=1)
        with pytest.raises(RateLimitedError) as err:
            client.get("sop_orders/1")
    assert err.value.status == 429 and err.value.retry_after == 1
    assert client.stats.by_status == {200: 2, 429: 2}  # /sites and the warm-up, then two 429s
    assert len(client.stats.sleeps) == 1 and client.stats.sleeps[0] >= 1  # waited what Sage asked


@pytest.mark.parametrize(("knob", "status"), [("rate_429", 429), ("rate_5xx", 503), ("rate_504", 504)])
def test_transient_failures_are_retried_until_success(
    sandbox: Sandbox, tmp_path: Path, knob: str, status: int
) -> None:
    config = make_config(sandbox, tmp_path, max_attempts=40, page_size=4, max_concurrency=1)
    with Sage200Client(config) as client:
        client.get("sop_orders/1")  # token and site settled before the faults start
        faults(sandbox, **{knob: "0.6", "seed": 7, "retry_after_seconds": 0})
        rows = client.list("products")
    assert len(rows) == 10
    failures = client.stats.by_status.get(status, 0)
    assert failures >= 1, f"the fault never fired; pick another seed ({client.stats})"
    assert client.stats.retries == failures  # every failure was retried, and nothing else
    assert client.stats.by_status[200] == 2 + 3  # /sites, the warm-up, then pages of 4 + 4 + 2 rows


def test_persistent_5xx_and_timeouts_surface_as_unavailable(sandbox: Sandbox, tmp_path: Path) -> None:
    with Sage200Client(make_config(sandbox, tmp_path, max_attempts=3, timeout_seconds=0.3)) as client:
        client.get("sop_orders/1")
        faults(sandbox, rate_5xx=1)
        with pytest.raises(UnavailableError) as err:
            client.list("products")
        assert err.value.status == 503 and client.stats.by_status[503] == 3
        assert client.stats.retries == 2

        faults(sandbox, rate_5xx=0, slow_seconds="0.6")
        with pytest.raises(UnavailableError, match="ReadTimeout"):
            client.get("sop_orders/1")
        assert client.stats.retries == 4
        # a write that timed out may have landed: not retried, and said so
        with pytest.raises(OutcomeUnknownError, match="may have been applied"):
            client.post("stocktakes", {"warehouse_id": 1})
        assert client.stats.retries == 4


def test_lost_write_response_is_outcome_unknown_and_not_resent(sandbox: Sandbox, sage: Sage200Client) -> None:
    target = order(sage, "SO0001001")
    line = standard_lines(target)[0]
    admin(
        sandbox, "/_sandbox/drop_next_response", {"method": "POST", "path_contains": "sop_confirm_despatch"}
    )
    body = {"sop_order_return_id": target["id"], "items": [{"id": line["id"], "quantity": Decimal(1)}]}
    with pytest.raises(OutcomeUnknownError) as err:
        sage.post("sop_confirm_despatch", body)
    assert err.value.status == 504
    assert despatched(sage, line["id"]) == 1  # Sage applied it; the plain post did not send it again


# -- despatch --------------------------------------------------------------------------------------


def test_confirm_despatch_posts_only_what_is_outstanding(sage: Sage200Client) -> None:
    target = order(sage, "SO0001001")
    first, second = standard_lines(target)[:2]
    assert first["line_quantity"] == 2

    result = sage.confirm_despatch(
        target["id"], [(first["id"], Decimal(1))], tracking={"consignment_no": "RM1"}
    )
    assert result["applied"] == [{"id": first["id"], "quantity": Decimal(1)}]
    assert result["response"]["items"][0]["quantity"] == 1

    result = sage.confirm_despatch(
        target["id"],
        [(first["id"], Decimal(2)), (second["id"], second["line_quantity"])],
        despatch_date=date(2026, 11, 24),
    )
    assert result["response"]["despatch_receipt_date"].startswith("2026-11-24")
    assert result["applied"] == [
        {"id": first["id"], "quantity": Decimal(1)},
        {"id": second["id"], "quantity": second["line_quantity"]},
    ]
    again = sage.confirm_despatch(target["id"], [(first["id"], Decimal(2))])
    assert again["applied"] == [] and again["already_done"] == [first["id"]] and again["response"] is None
    assert despatched(sage, first["id"]) == 2
    receipts = sage.list("sop_despatch_receipts", filter=f"sop_order_id eq {target['id']}")
    assert len(receipts) == 2
    assert receipts[0]["consignment_no"] == "RM1"


def test_despatch_whose_response_is_lost_is_not_posted_twice(sandbox: Sandbox, sage: Sage200Client) -> None:
    target = order(sage, "SO0001001")
    line = standard_lines(target)[0]
    admin(
        sandbox, "/_sandbox/drop_next_response", {"method": "POST", "path_contains": "sop_confirm_despatch"}
    )

    result = sage.confirm_despatch(target["id"], [(line["id"], Decimal(2))])

    assert result["attempts"] == 2
    assert result["applied"] == [{"id": line["id"], "quantity": Decimal(2)}]
    assert result["response"] is None  # the second attempt found nothing left to post
    assert despatched(sage, line["id"]) == 2
    receipts = sage.list("sop_despatch_receipts", filter=f"sop_order_id eq {target['id']}")
    assert len(receipts) == 1


def test_locked_order_is_retried_and_posted_once_the_lock_clears(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox, tmp_path, max_attempts=100, backoff_max_seconds=0.1)
    with Sage200Client(config) as client:
        target = order(client, "SO0001001")
        line = standard_lines(target)[0]
        admin(sandbox, "/_sandbox/locks", {"document_no": "SO0001001", "seconds": "0.6"})

        result = client.confirm_despatch(target["id"], [(line["id"], Decimal(2))])

        assert result["attempts"] >= 2
        assert client.stats.by_status[400] == result["attempts"] - 1  # each lock refusal, then success
        assert despatched(client, line["id"]) == 2


@pytest.mark.parametrize("lock_status", [400, 423])
def test_order_locked_past_the_deadline_is_record_locked_naming_it(
    sandbox: Sandbox, tmp_path: Path, lock_status: int
) -> None:
    config = make_config(sandbox, tmp_path, max_attempts=50, deadline_seconds=0.4, backoff_max_seconds=0.1)
    with Sage200Client(config) as client:
        target = order(client, "SO0001001")
        line = standard_lines(target)[0]
        faults(sandbox, lock_status=lock_status)  # Sage's is a 400; 423 in case a gateway maps it
        admin(sandbox, "/_sandbox/locks", {"document_no": "SO0001001", "seconds": 60})

        with pytest.raises(RecordLockedError) as err:
            client.confirm_despatch(target["id"], [(line["id"], Decimal(2))])

        assert err.value.record == "SO0001001"
        assert "SO0001001" in str(err.value) and err.value.status == lock_status
        assert client.stats.by_status[lock_status] >= 2  # it did retry before giving up
        assert despatched(client, line["id"]) == 0


def test_despatch_under_random_faults_lands_exactly_once(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(sandbox, tmp_path, max_attempts=60, backoff_max_seconds=0.02)
    with Sage200Client(config) as client:
        live = [order(client, no) for no in ("SO0001001", "SO0001003", "SO0001005", "SO0001006")]
        targets = [
            (o["id"], [(line["id"], line["line_quantity"]) for line in standard_lines(o)]) for o in live
        ]
        faults(
            sandbox,
            seed=3,
            rate_429="0.2",
            rate_504="0.3",
            lock_rate="0.2",
            lock_seconds="0.05",
            retry_after_seconds=0,
        )
        for _ in range(2):  # lost answers on top: applied, then reported as a 504
            admin(
                sandbox,
                "/_sandbox/drop_next_response",
                {"method": "POST", "path_contains": "confirm_despatch"},
            )

        for order_id, lines in targets:
            client.confirm_despatch(order_id, lines)

        faults(sandbox, rate_429=0, rate_504=0, lock_rate=0)
        assert client.stats.retries >= 4, client.stats  # the faults did bite
        for _, lines in targets:
            for line_id, quantity in lines:
                assert despatched(client, line_id) == quantity, line_id


def test_despatch_bad_input_is_refused_before_posting(sage: Sage200Client) -> None:
    target = order(sage, "SO0001001")
    line = standard_lines(target)[0]
    other = standard_lines(order(sage, "SO0001002"))[0]
    cases: list[tuple[list[Any], str]] = [
        ([(line["id"], 1.0)], "must be a Decimal"),
        ([(line["id"], Decimal(-1))], "negative"),
        ([(line["id"], Decimal(1)), (line["id"], Decimal(2))], "given twice"),
        ([(other["id"], Decimal(1))], "not a line of this order"),
        ([(line["id"], Decimal(3))], "exceeds line_quantity 2"),
    ]
    for lines, message in cases:
        with pytest.raises(InvalidRequestError, match=message) as err:
            sage.confirm_despatch(target["id"], lines)
        assert str(line["id"]) in str(err.value) or str(other["id"]) in str(err.value)
    assert despatched(sage, line["id"]) == 0
    assert sage.list("sop_despatch_receipts") == []


# -- tokens ----------------------------------------------------------------------------------------


def test_rotated_refresh_token_is_persisted_and_used_by_a_new_client(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "sage-token.json"
    config = make_config(sandbox, tmp_path, token_store_path=store)
    with Sage200Client(config) as first:
        first.sites()
        rotated = first.current_refresh_token
    assert rotated != "sandbox-refresh"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert jsonutil.loads(store.read_bytes())["refresh_token"] == rotated
    assert not list(tmp_path.glob(".sage-token.json.*"))  # no temp files left behind

    # A restart: same config (its bootstrap token is spent), same store.
    with Sage200Client(config) as second:
        assert second.list("warehouses")
        assert second.current_refresh_token == rotated  # the stored access token was still good
        second._tokens.invalidate(second._tokens.access_token())
        second.sites()
        assert second.current_refresh_token not in (rotated, "sandbox-refresh")
    assert jsonutil.loads(store.read_bytes())["refresh_token"] == second.current_refresh_token

    # Without the store, the spent bootstrap token is refused: rotation is real.
    third = Sage200Client(make_config(sandbox, tmp_path, token_store_path=None))
    with third, pytest.raises(AuthError, match="invalid_grant"):
        third.sites()

    secrets = {"sandbox-refresh", rotated, second.current_refresh_token}
    assert not any(secret in record.getMessage() for record in caplog.records for secret in secrets)
    assert "sandbox-refresh" not in repr(config)


def test_clients_sharing_a_token_store_do_not_spend_each_others_refresh_token(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Two Dagster step processes start together from the same store, before either has a token.
    config = make_config(sandbox, tmp_path)
    with Sage200Client(config) as one, Sage200Client(config) as two:
        one.sites()  # spends the bootstrap token, stores the rotated pair
        two.sites()  # would present the spent token; re-reads the store under its lock instead
        assert two.stats.token_refreshes == 0
        assert one.current_refresh_token == two.current_refresh_token
        two._tokens.invalidate(two._tokens.access_token())  # force a real refresh in "process" two
        two.sites()
        one._tokens.invalidate(one._tokens.access_token())
        one.sites()  # adopts two's rotation rather than failing with invalid_grant
    assert one.stats.token_refreshes == 1 and two.stats.token_refreshes == 1
    assert jsonutil.loads(config.token_store_path.read_bytes())["refresh_token"] == two.current_refresh_token


def test_expired_token_gets_one_refresh_and_retry(sandbox: Sandbox, sage: Sage200Client) -> None:
    sage.sites()
    faults(sandbox, expire_next_tokens=1)
    assert sage.get("sop_orders/1")["id"] == 1
    assert sage.stats.token_refreshes == 2 and sage.stats.by_status[401] == 1

    faults(sandbox, expire_next_tokens=2)
    with pytest.raises(AuthError):
        sage.get("sop_orders/1")
    assert sage.stats.token_refreshes == 3


def test_token_refreshed_before_expiry_within_skew(sandbox: Sandbox, tmp_path: Path) -> None:
    faults(sandbox, access_token_seconds=30)
    with Sage200Client(make_config(sandbox, tmp_path, token_refresh_skew_seconds=60)) as client:
        client.sites()
        client.sites()
    assert client.stats.token_refreshes == 2 and 401 not in client.stats.by_status
    with Sage200Client(make_config(sandbox, tmp_path / "b", token_refresh_skew_seconds=10)) as client:
        client.authorize("sandbox-code", "http://localhost/callback")
        client.sites()
        client.sites()
    assert client.stats.token_refreshes == 1  # the code grant only: its 30 s token outlives the 10 s skew


# -- stocktake -------------------------------------------------------------------------------------


def holding_levels(sage: Sage200Client, warehouse_id: int) -> dict[int, Decimal]:
    return {
        h["product_id"]: h["quantity_in_stock"]
        for h in sage.list(f"warehouses/{warehouse_id}/warehouse_holdings")
    }


def test_stocktake_adjusts_counted_and_delta_items(sage: Sage200Client) -> None:
    warehouse = sage.list("warehouses")[0]
    before = holding_levels(sage, warehouse["id"])
    candidates = sage.post("stocktake_new_items", {"warehouse_id": warehouse["id"]})["stocktake_items"]
    holding_to_product = {
        h["id"]: h["product_id"] for h in sage.list(f"warehouses/{warehouse['id']}/warehouse_holdings")
    }
    countable = [holding_to_product[c["warehouse_holding_id"]] for c in candidates]
    assert len(countable) >= 3
    a, b, c = countable[:3]

    result = sage.adjust_stock_via_stocktake(
        warehouse["id"],
        [
            StockCount(a, before[a] + 3, narrative="found in returns bay"),
            StockCount(b, Decimal(-2), kind="delta"),
            StockCount(c, before[c]),  # counted as recorded: no adjustment
        ],
        narrative="WMS parity",
    )

    assert result.status == "Complete"
    got = {adj["product_id"]: adj["adjustment"] for adj in result.adjustments}
    assert got == {a: Decimal(3), b: Decimal(-2)}
    after = holding_levels(sage, warehouse["id"])
    assert after[a] == before[a] + 3 and after[b] == before[b] - 2 and after[c] == before[c]
    stocktake = sage.get(f"stocktakes/{result.stocktake_id}")
    assert stocktake["stocktake_status"] == "Complete" and stocktake["nominal_narrative"] == "WMS parity"


def test_stocktake_bad_input_creates_nothing(sage: Sage200Client) -> None:
    warehouse = sage.list("warehouses")[0]
    holdings = sage.list(f"warehouses/{warehouse['id']}/warehouse_holdings")
    level = {h["product_id"]: h["quantity_in_stock"] for h in holdings}
    product = holdings[0]["product_id"]
    with pytest.raises(InvalidRequestError, match="below zero"):
        sage.adjust_stock_via_stocktake(
            warehouse["id"], [StockCount(product, -level[product] - 1, kind="delta")]
        )
    with pytest.raises(InvalidRequestError, match="no such product"):
        sage.adjust_stock_via_stocktake(warehouse["id"], [StockCount(999999, Decimal(1))])
    with pytest.raises(InvalidRequestError, match="finite Decimal"):
        sage.adjust_stock_via_stocktake(warehouse["id"], [StockCount(product, 1.5)])  # type: ignore[arg-type]
    assert sage.list("stocktakes") == []


def test_stocktake_survives_lost_create_and_approve_responses(sandbox: Sandbox, sage: Sage200Client) -> None:
    warehouse_id = sage.list("warehouses")[0]["id"]
    before = holding_levels(sage, warehouse_id)
    candidates = sage.post("stocktake_new_items", {"warehouse_id": warehouse_id})["stocktake_items"]
    holding_to_product = {
        h["id"]: h["product_id"] for h in sage.list(f"warehouses/{warehouse_id}/warehouse_holdings")
    }
    product = holding_to_product[candidates[0]["warehouse_holding_id"]]
    for part in ("/stocktakes", "/stocktake_approve_complete"):
        admin(sandbox, "/_sandbox/drop_next_response", {"method": "POST", "path_contains": part})

    result = sage.adjust_stock_via_stocktake(warehouse_id, [StockCount(product, Decimal(5), kind="delta")])

    assert result.status == "Complete"
    assert [(a["product_id"], a["adjustment"]) for a in result.adjustments] == [(product, Decimal(5))]
    assert len(sage.list("stocktakes")) == 1  # the lost create was found by name, not repeated
    assert holding_levels(sage, warehouse_id)[product] == before[product] + 5  # applied once
    assert sage.stats.by_status[504] == 2
