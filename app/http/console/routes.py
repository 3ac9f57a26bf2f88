"""The console's pages and the partials they poll. Each route reads through the runtime's
queries (orders, dead letters, the auditor, the event graph, the pace of recent sagas) and
renders a template; nothing here computes what the operations already do."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.bootstrap import Runtime
from app.domain.errors import OrderNotFound
from app.domain.states import OrderStatus
from app.domain.values import money
from app.operations.audit import audit
from app.operations.eventgraph import mermaid
from app.operations.pace import recent_pace
from app.operations.story import sequence_diagram, took

HERE = Path(__file__).parent

#: Where the console's files (htmx, Mermaid, its CSS) are served.
STATIC = "/console/static"

#: Newest orders listed on the console's first page.
NEWEST = 25

#: How often the pages poll their partials, in milliseconds (the auditor reads every table,
#: so it is asked less often).
POLL_MS = 1000
AUDIT_POLL_MS = 3000


#: The orders list's filters: empty means any (an HTML form sends the field empty).
StatusFilter = OrderStatus | Literal[""]
ReasonFilter = Annotated[str, Query(max_length=64)]

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["money"] = money
templates.env.filters["took"] = took
templates.env.filters["clock"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S UTC")
templates.env.globals.update(static=STATIC, poll_ms=POLL_MS, audit_poll_ms=AUDIT_POLL_MS, statuses=list(OrderStatus))


def mount(api: FastAPI, rt: Runtime) -> None:
    """Serve the console at ``/`` and under ``/console`` (its files under :data:`STATIC`)."""
    api.mount(STATIC, StaticFiles(directory=HERE / "static"), name="console-static")
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
    _orders(router, rt)
    _order(router, rt)
    _system(router, rt)
    api.include_router(router)


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _orders(router: APIRouter, rt: Runtime) -> None:
    def orders_context(status: OrderStatus | None, reason: str | None) -> dict[str, Any]:
        return {
            "counts": rt.order.saga_counts().by_status,
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

    # The operators' pages: their blocks are filled once the operator endpoints exist.
    @router.get("/console/dead-letters")
    def dead_letters_page(request: Request) -> HTMLResponse:
        return page(request, "dead_letters.html")

    @router.get("/console/parked")
    def parked_page(request: Request) -> HTMLResponse:
        return page(request, "parked.html")
