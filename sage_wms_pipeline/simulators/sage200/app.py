"""The Sage 200 simulator as a FastAPI app: Sage's REST paths, a Sage ID token endpoint, and `/_sandbox/`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.checks import scenario_problems
from sage_wms_pipeline.scenario.model import Scenario
from sage_wms_pipeline.simulators.common import ExactJSONResponse
from sage_wms_pipeline.simulators.sage200 import resources as R
from sage_wms_pipeline.simulators.sage200.odata import ODataError
from sage_wms_pipeline.simulators.sage200.service import (
    ConfirmDespatch,
    CountSheetItemIn,
    DropRule,
    Faults,
    GoodsIn,
    OrderIn,
    OrderStatusIn,
    OrderUpdate,
    Sage200,
    SageError,
    StocktakeIn,
    parse_body,
    validation_error,
)
from sage_wms_pipeline.simulators.sage200.store import COMPANY_ID, SITE_ID, ScenarioLoadError

BASE = "/uk/sage200extra/accounts/v1"


class LockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_no: str = Field(max_length=20)
    seconds: Decimal = Field(gt=0)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> ExactJSONResponse:
    return ExactJSONResponse(content, status_code=status, headers=headers)


def _admin_json(raw: bytes) -> Any:
    try:
        return jsonutil.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise SageError(f"body: malformed JSON ({exc})", "body") from None


def create_app(data_dir: Path) -> FastAPI:
    data_dir.mkdir(parents=True, exist_ok=True)
    sage = Sage200(data_dir)
    app = FastAPI(title="Sage 200 simulator", docs_url="/_sandbox/docs", openapi_url="/_sandbox/openapi.json")
    app.state.sage = sage

    @app.exception_handler(SageError)
    async def _sage_error(_: Request, exc: SageError) -> Response:
        return _json(exc.body(), exc.status)

    @app.exception_handler(ODataError)
    async def _odata_error(_: Request, exc: ODataError) -> Response:
        return _json({"message": str(exc), "field": str(exc).split(":")[0].split()[0]}, 400)

    @app.exception_handler(RequestValidationError)
    async def _bad_path(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        name = str(err["loc"][-1])
        return _json({"message": f"{name}: {err['msg']}", "field": name}, 400)

    @app.middleware("http")
    async def gateway(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """What sits in front of Sage: bearer and company headers, throttling, timeouts, faults."""
        path = request.url.path
        if not path.startswith(BASE):
            return await call_next(request)
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token or not await run_in_threadpool(sage.token_valid, token):
            return Response(status_code=401)  # Sage's gateway answers 401 with an empty body
        if path.rstrip("/") != BASE + "/sites" and (
            request.headers.get("x-site") != SITE_ID or request.headers.get("x-company") != str(COMPANY_ID)
        ):
            return Response(status_code=401)
        faults = sage.faults
        if faults.slow_seconds > 0:
            await asyncio.sleep(float(faults.slow_seconds))
        if faults.rate_429 > 0 and Decimal(str(sage.draw())) < faults.rate_429:
            sage.faults_served["429"] += 1
            return _json(
                {"message": "Rate limit is exceeded. Try again later."},
                429,
                {"Retry-After": str(faults.retry_after_seconds)},
            )
        if faults.rate_5xx > 0 and Decimal(str(sage.draw())) < faults.rate_5xx:
            sage.faults_served["503"] += 1
            return _json({"message": "An error has occurred."}, 503)
        if faults.rate_504 > 0 and Decimal(str(sage.draw())) < faults.rate_504:
            sage.faults_served["504"] += 1
            return Response("Gateway Timeout", status_code=504, media_type="text/plain")
        response = await call_next(request)
        rule = next(
            (r for r in sage.drop_rules if r.method.upper() == request.method and r.path_contains in path),
            None,
        )
        if rule is not None and response.status_code < 400:
            sage.drop_rules.remove(rule)  # the write happened; the caller never hears how it went
            return Response("Gateway Timeout", status_code=rule.status, media_type="text/plain")
        return response

    # --- Sage ID ---------------------------------------------------------------------------------

    @app.post("/oauth/token")
    async def oauth_token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        try:
            return _json(await run_in_threadpool(sage.token_grant, form))
        except SageError as exc:
            error, _, description = exc.message.partition(": ")
            return _json({"error": error, "error_description": description or error}, exc.status)

    # --- reads -----------------------------------------------------------------------------------

    def params(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    @app.get(BASE + "/sites")
    def sites() -> Response:
        return _json(sage.sites())

    def collection(path: str, res: R.Resource) -> None:
        def list_all(request: Request) -> Response:
            return _json(sage.list(res, params(request)))

        def get_one(entity_id: int, request: Request) -> Response:
            return _json(sage.get(res, entity_id, params(request)))

        app.get(f"{BASE}/{path}", name=f"list_{path}")(list_all)
        app.get(f"{BASE}/{path}/{{entity_id}}", name=f"get_{path}")(get_one)

    for res in (
        R.PRODUCT_GROUP,
        R.PRODUCT,
        R.WAREHOUSE,
        R.WAREHOUSE_HOLDING,
        R.CUSTOMER,
        R.SOP_DESPATCH_RECEIPT,
        R.SOP_RETURN,
    ):
        collection(res.name, res)

    def nested(path: str, res: R.Resource, where: str) -> None:
        def list_nested(request: Request) -> Response:
            ids = tuple(int(v) for v in request.path_params.values())
            return _json(sage.list(res, params(request), where, ids))

        app.get(f"{BASE}/{path}", name=f"list_{path}")(list_nested)

    nested("product_groups/{group_id:int}/products", R.PRODUCT, '"product_group_id" = ?')
    nested("products/{product_id:int}/warehouse_holdings", R.WAREHOUSE_HOLDING, '"product_id" = ?')
    nested("warehouses/{warehouse_id:int}/warehouse_holdings", R.WAREHOUSE_HOLDING, '"warehouse_id" = ?')
    nested(
        "warehouses/{warehouse_id:int}/products/{product_id:int}/warehouse_holdings",
        R.WAREHOUSE_HOLDING,
        '"warehouse_id" = ? AND "product_id" = ?',
    )
    nested("customers/{customer_id:int}/sop_orders", R.SOP_ORDER, '"customer_id" = ?')
    nested("sop_orders/{order_id:int}/sop_order_lines", R.SOP_ORDER_LINE, '"sop_order_id" = ?')

    @app.get(BASE + "/product_transaction_views")
    def product_transaction_views(request: Request) -> Response:
        return _json(sage.list(R.PRODUCT_TRANSACTION_VIEW, params(request)))

    @app.get(BASE + "/sop_order_despatch_line_views")
    def despatch_line_views(request: Request) -> Response:
        return _json(sage.list(R.SOP_ORDER_DESPATCH_LINE_VIEW, params(request)))

    @app.get(BASE + "/sop_orders")
    def list_orders(request: Request) -> Response:
        return _json(sage.list(R.SOP_ORDER, params(request)))

    @app.get(BASE + "/sop_orders/{order_id}")
    def get_order(order_id: int, request: Request) -> Response:
        return _json(sage.order(order_id, params(request)))

    @app.get(BASE + "/sop_orders/{order_id}/sop_order_lines/{line_id}")
    def get_order_line(order_id: int, line_id: int) -> Response:
        return _json(sage.line(line_id, order_id))

    @app.get(BASE + "/sop_order_lines/{line_id}")
    def get_line(line_id: int) -> Response:
        return _json(sage.line(line_id))

    @app.get(BASE + "/sop_settings")
    def sop_settings() -> Response:
        return _json([sage.sop_settings()])

    @app.get(BASE + "/sop_settings/{settings_id}")
    def sop_settings_one(settings_id: int) -> Response:
        if settings_id != 1:
            raise SageError(f"sop_settings: no record with id {settings_id}", "id", 404)
        return _json(sage.sop_settings())

    @app.get(BASE + "/stock_settings")
    def stock_settings() -> Response:
        return _json([sage.stock_settings()])

    @app.get(BASE + "/stock_settings/{settings_id}")
    def stock_settings_one(settings_id: int) -> Response:
        if settings_id != 1:
            raise SageError(f"stock_settings: no record with id {settings_id}", "id", 404)
        return _json(sage.stock_settings())

    @app.get(BASE + "/sop_confirm_despatch")
    def confirm_despatch_list(request: Request) -> Response:
        return _json(sage.confirm_despatch_list(params(request)))

    @app.get(BASE + "/stocktakes")
    def list_stocktakes(request: Request) -> Response:
        return _json([sage.stocktake(s["id"]) for s in sage.list(R.STOCKTAKE, params(request))])

    @app.get(BASE + "/stocktakes/{stocktake_id}")
    def get_stocktake(stocktake_id: int) -> Response:
        return _json(sage.stocktake(stocktake_id))

    @app.get(BASE + "/stocktake_count_sheet_items/{item_id}")
    def get_count_item(item_id: int) -> Response:
        return _json(sage.count_sheet_item(item_id))

    # --- writes ----------------------------------------------------------------------------------

    @app.post(BASE + "/sop_confirm_despatch")
    async def confirm_despatch(request: Request) -> Response:
        body = parse_body(ConfirmDespatch, await request.body())
        return _json(await run_in_threadpool(sage.confirm_despatch, body))

    @app.post(BASE + "/sop_orders")
    async def create_order(request: Request) -> Response:
        body = parse_body(OrderIn, await request.body())
        return _json(await run_in_threadpool(sage.create_order, body))

    @app.put(BASE + "/sop_orders/{order_id}")
    async def update_order(order_id: int, request: Request) -> Response:
        body = parse_body(OrderUpdate, await request.body())
        return _json(await run_in_threadpool(sage.update_order, order_id, body))

    @app.post(BASE + "/sop_returns")
    async def create_return(request: Request) -> Response:
        body = parse_body(OrderIn, await request.body())
        return _json(await run_in_threadpool(sage.create_return, body))

    def stocktake_step(path: str, step: Callable[[StocktakeIn], dict[str, Any]]) -> None:
        async def run(request: Request) -> Response:
            body = parse_body(StocktakeIn, await request.body())
            return _json(await run_in_threadpool(step, body))

        app.post(f"{BASE}/{path}", name=path)(run)

    stocktake_step("stocktake_new_items", sage.stocktake_new_items)
    stocktake_step("stocktakes", sage.create_stocktake)
    stocktake_step("stocktake_enter_values", sage.stocktake_enter_values)
    stocktake_step("stocktake_view_adjustments", sage.stocktake_view_adjustments)
    stocktake_step("stocktake_approve_complete", sage.stocktake_approve_complete)

    @app.put(BASE + "/stocktake_count_sheet_items/{item_id}")
    async def update_count_item(item_id: int, request: Request) -> Response:
        body = parse_body(CountSheetItemIn, await request.body())
        return _json(await run_in_threadpool(sage.update_count_item, item_id, body))

    # --- /_sandbox (no auth) ---------------------------------------------------------------------

    @app.get("/_sandbox/health")
    def health() -> Response:
        return _json({"status": "ok", "scenario": sage.meta("scenario_name")})

    @app.post("/_sandbox/reset")
    def reset() -> Response:
        sage.reset()
        return _json(sage.state())

    @app.post("/_sandbox/scenario")
    async def load_scenario(request: Request) -> Response:
        data = _admin_json(await request.body())
        try:
            # field checks here; the cross-reference pass below reports its first problem by field path
            scenario = Scenario.model_validate(data, context={"skip_cross_checks": True})
        except ValidationError as exc:
            raise validation_error(exc) from None
        problems = scenario_problems(scenario)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise SageError(problems[0] + more, problems[0].split(":")[0])
        try:
            await run_in_threadpool(sage.load, scenario)
        except ScenarioLoadError as exc:
            raise SageError(str(exc), str(exc).split(":")[0]) from None
        return _json(sage.state())

    @app.get("/_sandbox/state")
    def state() -> Response:
        return _json(sage.state())

    @app.get("/_sandbox/faults")
    def get_faults() -> Response:
        return _json(sage.faults.model_dump(mode="python"))

    @app.post("/_sandbox/faults")
    async def set_faults(request: Request) -> Response:
        """Partial update: fields not given keep their current value."""
        data = _admin_json(await request.body())
        if not isinstance(data, dict):
            raise SageError("body: expected a JSON object", "body")
        try:
            faults = Faults.model_validate(sage.faults.model_dump() | data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        sage.set_faults(faults)
        return _json(faults.model_dump(mode="python"))

    @app.get("/_sandbox/locks")
    def get_locks() -> Response:
        return _json(sage.locks())

    @app.post("/_sandbox/locks")
    async def hold_lock(request: Request) -> Response:
        body = parse_body(LockRequest, await request.body())
        return _json(await run_in_threadpool(sage.hold_record, body.document_no, body.seconds))

    @app.delete("/_sandbox/locks/{document_no}")
    def release_lock(document_no: str) -> Response:
        return _json({"released": sage.release_record(document_no)})

    @app.post("/_sandbox/drop_next_response")
    async def drop_next_response(request: Request) -> Response:
        rule = parse_body(DropRule, await request.body())
        sage.drop_rules.append(rule)
        return _json([r.model_dump() for r in sage.drop_rules])

    @app.post("/_sandbox/goods_in")
    async def goods_in(request: Request) -> Response:
        body = parse_body(GoodsIn, await request.body())
        return _json(await run_in_threadpool(sage.goods_in, body))

    @app.post("/_sandbox/orders/{document_no}/status")
    async def order_status(document_no: str, request: Request) -> Response:
        body = parse_body(OrderStatusIn, await request.body())
        return _json(await run_in_threadpool(sage.set_order_status, document_no, body.status))

    @app.get("/_sandbox/settings")
    def get_settings() -> Response:
        return _json(sage.sop_settings())

    @app.post("/_sandbox/settings")
    async def set_settings(request: Request) -> Response:
        data = _admin_json(await request.body())
        if not isinstance(data, dict):
            raise SageError("body: expected a JSON object", "body")
        return _json(await run_in_threadpool(sage.update_settings, data))

    return app
