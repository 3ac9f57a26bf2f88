"""The FastAPI application: routes over a running system, and the map from the product's
errors to HTTP statuses (InvalidOrder 422, OrderNotFound 404, Busy 503)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at
# runtime, and a dependency they name (``known_order``) is local to its function.
import asyncio
import math
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from app.api import System, admit_and_place, validate_order
from app.bootstrap import Runtime
from app.domain.errors import Busy, IdempotencyKeyReused, InvalidOrder, OrderNotFound
from app.domain.states import TERMINAL, OrderStatus
from app.http import console, docs, operator, schemas
from app.http.auth import BearerAuth, Lock
from app.http.operator import OPERATOR_PATHS
from app.http.ratelimit import RateLimit
from app.operations import metrics
from app.operations.health import check
from app.operations.story import sequence_diagram
from app.services.order import OrderView

#: How often a Server-Sent Events stream looks at its order again, in seconds.
EVENTS_POLL_SECONDS = 0.25

#: Most orders one page of ``GET /orders`` lists.
MAX_PAGE = 500

#: The statuses a route may answer besides its success, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "CHECKOUT_API_TOKEN is set and the request lacks its bearer token"},
}


def create_app(
    system: System,
    *,
    token: str | None = None,
    operator_token: str | None = None,
    rate_limit_per_minute: int | None = None,
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The HTTP API over a started ``system``; its settings (``CHECKOUT_API_*``,
    ``CHECKOUT_OPERATOR_TOKEN``) unless given."""
    rt = system.runtime
    settings = rt.settings
    if token is None and settings.api_token is not None:
        token = settings.api_token.get_secret_value()
    if operator_token is None and settings.operator_token is not None:
        operator_token = settings.operator_token.get_secret_value()
    locks = {"": Lock(token, "CHECKOUT_API_TOKEN")} if token else {}
    if operator_token:
        operator_lock = Lock(operator_token, "CHECKOUT_OPERATOR_TOKEN")
        locks.update({prefix: operator_lock for prefix in (*OPERATOR_PATHS, *console.OPERATOR_PAGES)})
    limit = RateLimit(settings.api_rate_limit_per_minute if rate_limit_per_minute is None else rate_limit_per_minute)
    api = FastAPI(
        title="Checkout Saga",
        summary="Place orders and follow their sagas.",
        version="1",
        max_body_size=settings.api_max_body_bytes if max_body_bytes is None else max_body_bytes,
        responses=ERRORS if token else None,
        docs_url=None,  # served by docs.mount, from vendored files
        redoc_url=None,
    )
    if locks:
        api.add_middleware(BearerAuth, locks=locks)
    _errors(api)
    _placing(api, rt, limit)
    _reading(api, rt)
    _operating(api, rt)
    operator.register(api, rt, guarded=bool(locks))
    console.mount(api, rt, set(locks.values()))
    docs.mount(api)
    return api


def _placing(api: FastAPI, rt: Runtime, limit: RateLimit) -> None:
    @api.post(
        "/orders",
        status_code=201,
        response_model=schemas.Order,
        responses={
            **schemas.UNREADABLE_BODY,
            413: {"description": "the body is over CHECKOUT_API_MAX_BODY_BYTES; nothing written"},
            422: {"description": "invalid order (the field in `loc`), or an idempotency key reused for another"},
            429: {"description": "this customer is over CHECKOUT_API_RATE_LIMIT_PER_MINUTE; see Retry-After"},
            503: {"description": "the system is over capacity; nothing written; see Retry-After"},
        },
    )
    def place(
        body: schemas.OrderRequest,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                description="the same key with the same order answers with the same order, placing nothing; "
                'a structured-field string ("abc") or the bare key'
            ),
        ] = None,
    ) -> schemas.Order:
        """Place an order and start its saga: ``place_order`` over HTTP."""
        key = structured_string(idempotency_key)
        request = validate_order(body.customer_id, body.items, body.payment_token, body.ship_to, key, body.currency)
        wait = limit.admit(request.customer_id)
        if wait is not None:
            raise RateLimited(wait)
        order_id = admit_and_place(rt, request)
        response.headers["Location"] = f"/orders/{order_id}"
        return schemas.order(rt.order.view(order_id))


def _reading(api: FastAPI, rt: Runtime) -> None:
    def known_order(order_id: str) -> OrderView:
        return rt.order.view(order_id)

    @api.get("/orders", response_model=schemas.OrderPage)
    def list_orders(
        request: Request,
        status: OrderStatus | None = None,
        reason: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[str | None, Query(max_length=64, description="the cursor: the `next` of a page")] = None,
    ) -> schemas.OrderPage:
        """Orders, newest first, filtered by status and reason; ``next`` pages on."""
        try:
            rows = rt.order.find(status=status, reason=reason, before=before, limit=limit)
        except OrderNotFound:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "before"), "msg": "no order with this id", "input": before}]
            ) from None
        following = None
        if len(rows) == limit:
            following = f"{request.url.path}?{request.url.include_query_params(before=rows[-1]['order_id']).query}"
        return schemas.OrderPage(orders=[schemas.summary(row) for row in rows], next=following)

    @api.get("/orders/{order_id}", response_model=schemas.Order, responses={404: {"description": "no such order"}})
    def get_order(view: Annotated[OrderView, Depends(known_order)]) -> schemas.Order:
        """The order's status, reason, total, lines and story."""
        return schemas.order(view)

    @api.get(
        "/orders/{order_id}/timeline",
        response_model=schemas.Timeline,
        responses={
            200: {"content": {"text/plain": {}}, "description": "JSON, or a Mermaid sequence diagram"},
            404: {"description": "no such order"},
        },
    )
    def get_timeline(
        view: Annotated[OrderView, Depends(known_order)], format: Literal["json", "mermaid"] = "json"
    ) -> Any:
        """The order's events, oldest first, and its dead letters; ``?format=mermaid`` draws them."""
        letters = rt.dead_letters.find(status=None, order_id=view.order_id)
        if format == "mermaid":
            return PlainTextResponse(sequence_diagram(view, letters) + "\n")
        return schemas.timeline(view, letters)

    @api.get(
        "/orders/{order_id}/events",
        response_class=EventSourceResponse,
        responses={404: {"description": "no such order"}},
    )
    async def order_events(view: Annotated[OrderView, Depends(known_order)]) -> AsyncIterator[ServerSentEvent]:
        """Server-Sent Events: a ``status`` event now and at each change of the order's status,
        reason or steps, until it is COMPLETED or CANCELLED."""
        seen: schemas.StatusChange | None = None
        while True:
            change = schemas.status_change(view)
            if change != seen:
                yield ServerSentEvent(event="status", data=change)
                seen = change
            if view.status in TERMINAL:
                return
            await asyncio.sleep(EVENTS_POLL_SECONDS)
            view = await run_in_threadpool(rt.order.view, view.order_id)


def _operating(api: FastAPI, rt: Runtime) -> None:
    @api.get("/health", response_model=schemas.Health, responses={503: {"description": "a check failed"}})
    def health() -> JSONResponse:
        """The checks of ``python -m app health``: the broker, each database, the workers."""
        results = check(rt, rt.settings.queues)
        body = schemas.Health(
            ok=all(r.ok for r in results),
            checks=[schemas.HealthCheck(name=r.name, ok=r.ok, detail=r.detail) for r in results],
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ok else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    def get_metrics() -> PlainTextResponse:
        """Saga metrics in Prometheus' text format (as ``python -m app metrics`` serves them)."""
        return PlainTextResponse(metrics.exposition(rt), media_type=CONTENT_TYPE_LATEST)


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def _errors(api: FastAPI) -> None:
    """The product's errors as HTTP answers."""

    @api.exception_handler(InvalidOrder)
    async def invalid(request: Request, exc: InvalidOrder) -> JSONResponse:
        kind = "idempotency_key_reused" if isinstance(exc, IdempotencyKeyReused) else "value_error"
        return JSONResponse({"detail": [{"type": kind, "loc": location(exc.field), "msg": exc.problem}]}, 422)

    @api.exception_handler(OrderNotFound)
    async def not_found(request: Request, exc: OrderNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 404)

    @api.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse({"detail": f"not placed, nothing written: {exc}"}, 503, headers=headers)

    @api.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        detail = f"too many orders from this customer; try again in {exc.retry_after}s"
        return JSONResponse({"detail": detail}, 429, headers={"Retry-After": str(exc.retry_after)})


def structured_string(value: str | None) -> str | None:
    """An ``Idempotency-Key`` as the IETF draft writes it, a structured-field string
    (``"8e03978e"``, RFC 8941: ``\\"`` and ``\\\\`` escaped), or as many clients send it, bare."""
    if value is None or len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return value
    return re.sub(r"\\([\\\"])", r"\1", value[1:-1])


def location(field: str) -> list[str | int]:
    """Where an InvalidOrder's field is in the request, as FastAPI's ``loc``:
    ``items[0].qty`` -> ``["body", "items", 0, "qty"]``; the idempotency key is a header."""
    if field == "idempotency_key":
        return ["header", "idempotency-key"]
    loc: list[str | int] = ["body"]
    if field == "order":  # the order as a whole
        return loc
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        loc.append(int(index) if index else name)
    return loc
