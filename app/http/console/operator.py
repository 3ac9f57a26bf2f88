"""The console's operator pages: the dead letters (``/console/dead-letters``) and the sagas
parked NEEDS_ATTENTION (``/console/parked``).

Every act, on one letter or order or on many, is done in two posts, as the operator's JSON
endpoints do it (:mod:`app.operations.bulk`): the first answers the preview — what would
run again, and which of it calls the payment gateway or the carrier — and sends nothing;
the preview's Confirm posts its token back, and only then is anything sent. A token that
is not the selection's now shows the new preview, saying so. The routes read the form,
call :class:`BulkOps` and render what it answers (as the JSON endpoints' schemas put it)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.bootstrap import Runtime
from app.http import schemas
from app.http.console.render import field, form, page
from app.operations.bulk import BulkOps, LetterFilter, StalePreview, external_system


@dataclass(frozen=True)
class Listing:
    """One of the operator's pages: its key in the navigation, its title, its path."""

    key: str
    title: str
    path: str


DEAD_LETTERS = Listing("dead_letters", "Dead letters", "/console/dead-letters")
PARKED = Listing("parked", "Parked", "/console/parked")

#: The console's pages CHECKOUT_OPERATOR_TOKEN guards (as it guards the operator's endpoints).
OPERATOR_PAGES = (DEAD_LETTERS.path, PARKED.path)

#: What a page's lists listen for to read themselves again after an act.
ACTED = {"HX-Trigger": "operator-acted"}

#: The fields of a dead-letter filter, as the forms name them.
FILTER_FIELDS = tuple(f.name for f in dataclass_fields(LetterFilter))

Status = Literal["DEAD", "REDRIVEN", "RESOLVED", "PURGED", "ALL"]
Text = Annotated[str, Query(max_length=255)]


def register(router: APIRouter, rt: Runtime) -> None:
    bulk = BulkOps(rt)
    _dead_letters(router, bulk)
    _parked(router, bulk)


def letter_filter(queue: Text = "", task: Text = "", order_id: Text = "", reason: Text = "") -> LetterFilter:
    """The list's filter from its query (an HTML form sends a field it leaves empty)."""
    return LetterFilter(queue=queue or None, task=task or None, order_id=order_id or None, reason=reason or None)


Selection = Annotated[LetterFilter, Depends(letter_filter)]


def _dead_letters(router: APIRouter, bulk: BulkOps) -> None:
    def letters_context(selection: LetterFilter, status: Status) -> dict[str, Any]:
        return {
            "letters": bulk.find(selection, None if status == "ALL" else status),
            "selection": selection,
            "status": status,
            "letter_statuses": get_args(Status),
        }

    @router.get("/console/dead-letters")
    def letters_page(request: Request, selection: Selection, status: Status = "DEAD") -> HTMLResponse:
        return page(request, "dead_letters.html", **letters_context(selection, status))

    @router.get("/console/dead-letters/list")
    def letters_partial(request: Request, selection: Selection, status: Status = "DEAD") -> HTMLResponse:
        return page(request, "_dead_letters.html", **letters_context(selection, status))

    def letter(request: Request, letter_id: str, found: str) -> HTMLResponse:
        try:
            shown = bulk.dlq.show(letter_id)
        except KeyError as exc:
            return page(request, "dead_letter.html", 404, missing=exc.args[0])
        return page(request, found, letter=shown, external=external_system(shown.task))

    @router.get("/console/dead-letters/{letter_id}")
    def letter_page(request: Request, letter_id: str) -> HTMLResponse:
        return letter(request, letter_id, "dead_letter.html")

    @router.get("/console/dead-letters/{letter_id}/facts")
    def letter_partial(request: Request, letter_id: str) -> HTMLResponse:
        return letter(request, letter_id, "_dead_letter.html")

    @router.post("/console/dead-letters/redrive")
    async def redrive(request: Request) -> HTMLResponse:
        """One letter (``letter_id``) or those a filter picks: the preview, or with
        ``confirm`` the act (or the new preview, if the token is stale)."""
        fields = await form(request)
        selection = LetterFilter(**{name: field(fields, name) for name in FILTER_FIELDS})
        return await preview_or_act(
            request,
            DEAD_LETTERS,
            "_redrive.html",
            field(fields, "confirm"),
            lambda: bulk.preview_redrive(selection),
            lambda token: schemas.redrive_done(bulk.redrive(selection, token)),
            schemas.redrive_preview,
        )


def _parked(router: APIRouter, bulk: BulkOps) -> None:
    @router.get("/console/parked")
    def parked_page(request: Request) -> HTMLResponse:
        return page(request, "parked.html", orders=[schemas.parked(p) for p in bulk.parked()])

    @router.get("/console/parked/list")
    def parked_partial(request: Request) -> HTMLResponse:
        return page(request, "_parked.html", orders=[schemas.parked(p) for p in bulk.parked()])

    @router.post("/console/parked/retry")
    async def retry(request: Request) -> HTMLResponse:
        """The orders named (``order_id``, repeated; none: every parked one): the preview,
        or with ``confirm`` the act (or the new preview, if the token is stale)."""
        fields = await form(request)
        order_ids = [each for each in fields.get("order_id", []) if each.strip()] or None
        return await preview_or_act(
            request,
            PARKED,
            "_retry.html",
            field(fields, "confirm"),
            lambda: bulk.preview_retry(order_ids),
            lambda token: schemas.retry_done(bulk.retry(order_ids, token)),
            schemas.retry_preview,
        )


async def preview_or_act(
    request: Request,
    listing: Listing,
    template: str,
    confirm: str | None,
    preview: Callable[[], Any],
    act: Callable[[str], BaseModel],
    shown: Callable[[Any], BaseModel],
) -> HTMLResponse:
    """``template`` with the preview (``shown`` as the JSON endpoints put it) when there is
    no ``confirm``; with it, the act's result — or, the token stale, the new preview and why.
    htmx swaps the partial into its page; a plain form's post gets it in a page of its own."""
    if confirm is None:
        context: dict[str, Any] = {"preview": shown(await run_in_threadpool(preview))}
    else:
        try:
            context = {"outcome": await run_in_threadpool(act, confirm)}
        except StalePreview as exc:
            context = {"preview": shown(exc.preview), "stale": str(exc)}
    headers = ACTED if "outcome" in context else None
    if "hx-request" in request.headers:
        return page(request, template, headers=headers, **context)
    return page(request, "acted.html", headers=headers, partial=template, listing=listing, **context)
