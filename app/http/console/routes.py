"""The console's pages and the partials they poll. Each route reads through the runtime's
queries (orders, dead letters, the auditor, the event graph, the pace of recent sagas) and
renders a template; nothing here computes what the operations already do."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from collections.abc import Collection
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from app.bootstrap import Runtime
from app.domain.errors import OrderNotFound
from app.domain.states import OrderStatus
from app.http.auth import SIGN_IN, Lock, safe_next, set_sign_in_cookies
from app.http.console import operator
from app.http.console.render import HERE, STATIC, field, form, page
from app.operations.audit import audit
from app.operations.eventgraph import mermaid
from app.operations.pace import recent_pace
from app.operations.story import sequence_diagram
from app.persistence.deadletters import DEAD

#: Newest orders listed on the console's first page.
NEWEST = 25

#: The orders list's filters: empty means any (an HTML form sends the field empty).
StatusFilter = OrderStatus | Literal[""]
ReasonFilter = Annotated[str, Query(max_length=64)]


def mount(api: FastAPI, rt: Runtime, locks: Collection[Lock] = ()) -> None:
    """Serve the console at ``/`` and under ``/console`` (its files under :data:`STATIC`);
    ``locks``: the tokens its sign-in page takes."""
    api.mount(STATIC, StaticFiles(directory=HERE / "static"), name="console-static")
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
    _orders(router, rt)
    _order(router, rt)
    _system(router, rt)
    operator.register(router, rt)
    _sign_in(router, locks)
    api.include_router(router)


def _orders(router: APIRouter, rt: Runtime) -> None:
    def orders_context(status: OrderStatus | None, reason: str | None) -> dict[str, Any]:
        return {
            "counts": rt.order.saga_counts().by_status,
            "dead_letters": sum(n for (_, status), n in rt.dead_letters.counts().items() if status == DEAD),
            "orders": rt.order.find(status=status, reason=reason, limit=NEWEST),
            "pace": recent_pace(rt),
            "status": status,
            "reason": reason or "",
        }

    @router.get("/")
    def orders_page(request: Request, status: StatusFilter = "", reason: ReasonFilter = "") -> HTMLResponse:
        return page(request, "orders.html", **orders_context(status or None, reason or None))

    @router.get("/console/orders")
    def orders_partial(request: Request, status: StatusFilter = "", reason: ReasonFilter = "") -> HTMLResponse:
        return page(request, "_orders.html", **orders_context(status or None, reason or None))


def _order(router: APIRouter, rt: Runtime) -> None:
    def order_context(order_id: str) -> dict[str, Any]:
        view = rt.order.view(order_id)
        letters = rt.dead_letters.find(status=None, order_id=order_id)
        # the steps that reported, in the order's definition's order; while the saga runs, those to come too
        saga = rt.order.definitions.for_order(view.saga_version)
        definition = (*saga.steps, *saga.epilogue)
        steps = [(s, view.steps.get(s.name)) for s in definition if s.name in view.steps or not view.terminal]
        undone = [(c, view.steps[c.name]) for c in saga.compensations if c.name in view.steps]
        return {
            "view": view,
            "steps": steps,
            "compensations": undone,
            "letters": letters,
            "diagram": sequence_diagram(view, letters),
        }

    def order(request: Request, order_id: str, found: str, missing: str) -> HTMLResponse:
        """The order in template ``found``; no such order: ``missing``, 404."""
        try:
            return page(request, found, **order_context(order_id))
        except OrderNotFound:
            return page(request, missing, 404, order_id=order_id)

    @router.get("/console/orders/{order_id}")
    def order_page(request: Request, order_id: str) -> HTMLResponse:
        return order(request, order_id, "order.html", "not_found.html")

    @router.get("/console/orders/{order_id}/live")
    def order_partial(request: Request, order_id: str) -> HTMLResponse:
        return order(request, order_id, "_order.html", "_not_found.html")


def _system(router: APIRouter, rt: Runtime) -> None:
    @router.get("/console/saga")
    def saga_page(request: Request) -> HTMLResponse:
        mode = rt.settings.saga_mode
        graph = mermaid(mode, rt.extensions.values(), rt.saga)
        return page(request, "saga.html", mode=mode, saga=rt.saga, graph=graph)

    @router.get("/console/audit")
    def audit_page(request: Request) -> HTMLResponse:
        return page(request, "audit.html", report=audit(rt))

    @router.get("/console/audit/verdict")
    def audit_partial(request: Request) -> HTMLResponse:
        return page(request, "_audit.html", report=audit(rt))


def _sign_in(router: APIRouter, locks: Collection[Lock]) -> None:
    """The sign-in page: a token in, its cookie out (:mod:`app.http.auth`)."""
    settings = sorted({lock.setting for lock in locks})

    @router.get(SIGN_IN)
    def sign_in_page(request: Request, next: str = "/", needs: str = "") -> HTMLResponse:
        return page(request, "sign_in.html", next=safe_next(next), needs=needs, settings=settings)

    @router.post(SIGN_IN, response_model=None)
    async def sign_in(request: Request) -> HTMLResponse | RedirectResponse:
        fields = await form(request)
        target = safe_next(field(fields, "next"))
        answer = RedirectResponse(target, 303)
        if set_sign_in_cookies(answer, locks, field(fields, "token") or "", secure=request.url.scheme == "https"):
            return answer
        return page(request, "sign_in.html", 401, next=target, needs="", settings=settings, refused=True)
