"""The operator's endpoints: the dead letters (``/dead-letters``) and the sagas parked
NEEDS_ATTENTION (``/parked``) — what ``python -m app dlq`` and ``orders attention`` /
``orders retry`` do, over HTTP.

Every path under :data:`OPERATOR_PATHS` needs ``CHECKOUT_OPERATOR_TOKEN`` when it is set
(``CHECKOUT_API_TOKEN`` does not open them), else ``CHECKOUT_API_TOKEN`` when that is set.
A bulk act is done in two requests: without ``confirm`` the answer is the preview (nothing
is sent), and the preview's ``token`` sent back as ``confirm`` does it — or, if the
selection changed since, answers 409 with the new preview and does nothing
(:mod:`app.operations.bulk`)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.bootstrap import Runtime
from app.domain.errors import NotParked
from app.http import schemas
from app.operations.bulk import BulkOps, LetterFilter, Resend, StalePreview
from app.operations.dlq import DeadLetterOps

#: The path prefixes of the operator's endpoints (what CHECKOUT_OPERATOR_TOKEN guards).
OPERATOR_PATHS = ("/dead-letters", "/parked")

#: Most dead letters one ``GET /dead-letters`` lists.
MAX_LETTERS = 500

NO_LETTER: dict[int | str, dict[str, Any]] = {
    404: {"description": "no dead letter with this id (or more than one start with it)"}
}


class Conflict(Exception):
    """A single action refused: the letter or order is not in a state to act on."""


class NoLetter(Exception):
    """No dead letter has this id (or more than one start with it)."""


def bulk_responses(unauthorized: dict[int | str, Any], stale: type[BaseModel]) -> dict[int | str, Any]:
    """What a bulk act's route may answer besides its preview or its result."""
    return {
        **unauthorized,
        **schemas.UNREADABLE_BODY,
        409: {"model": stale, "description": "`confirm` is not the token of the selection now: the new preview"},
    }


def preview_or_act(
    confirm: str | None,
    preview: Callable[[], BaseModel],
    act: Callable[[str], BaseModel],
    stale: Callable[[StalePreview[Any]], BaseModel],
) -> BaseModel | JSONResponse:
    """The preview without ``confirm``; with it, the act — or 409 and the new preview if
    ``confirm`` is not the token of the selection as it is now."""
    if confirm is None:
        return preview()
    try:
        return act(confirm)
    except StalePreview as exc:
        return JSONResponse(stale(exc).model_dump(mode="json"), 409)


def register(api: FastAPI, rt: Runtime, *, guarded: bool) -> None:
    """Add the operator's routes to ``api``; ``guarded``: a token guards them (401 documented)."""
    unauthorized: dict[int | str, dict[str, Any]] = (
        {401: {"description": "the request lacks the operator's bearer token (see the module's docs)"}}
        if guarded
        else {}
    )

    @api.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 409)

    @api.exception_handler(NoLetter)
    async def no_letter(request: Request, exc: NoLetter) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 404)

    _dead_letters(api, DeadLetterOps(rt), BulkOps(rt), unauthorized)
    _parked(api, DeadLetterOps(rt), BulkOps(rt), unauthorized)


def _dead_letters(api: FastAPI, ops: DeadLetterOps, bulk: BulkOps, unauthorized: dict[int | str, Any]) -> None:
    @api.get("/dead-letters", response_model=schemas.DeadLetterList, tags=["operator"], responses=unauthorized)
    def list_letters(
        status: Literal["DEAD", "REDRIVEN", "RESOLVED", "PURGED", "ALL"] = "DEAD",
        queue: Annotated[str | None, Query(max_length=64)] = None,
        task: Annotated[str | None, Query(max_length=128)] = None,
        order: Annotated[str | None, Query(max_length=64, description="the order's id")] = None,
        reason: Annotated[str | None, Query(max_length=255, description="a part of the reason, any case")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LETTERS)] = 100,
    ) -> schemas.DeadLetterList:
        """Dead letters, oldest first (those still DEAD unless ``status`` says otherwise)."""
        selection = LetterFilter(queue=queue, task=task, order_id=order, reason=reason)
        letters = bulk.find(selection, None if status == "ALL" else status)[:limit]
        return schemas.DeadLetterList(dead_letters=[schemas.DeadLetterItem.model_validate(d) for d in letters])

    @api.post(
        "/dead-letters/redrive",
        response_model=schemas.RedrivePreview | schemas.RedriveDone,
        tags=["operator"],
        responses=bulk_responses(unauthorized, schemas.StaleRedrive),
    )
    def redrive_many(body: schemas.RedriveRequest) -> Any:
        """Without ``confirm``: the preview of sending again every DEAD letter the filter
        picks — each one's task and whether it calls the payment gateway or the carrier —
        with its ``token``; nothing is sent. With ``confirm: <token>``: send them, retries reset."""
        selection = LetterFilter(**body.model_dump(exclude={"confirm"}))
        return preview_or_act(
            body.confirm,
            lambda: schemas.redrive_preview(bulk.preview_redrive(selection)),
            lambda token: schemas.redrive_done(bulk.redrive(selection, token)),
            lambda exc: schemas.StaleRedrive(detail=str(exc), preview=schemas.redrive_preview(exc.preview)),
        )

    @api.get(
        "/dead-letters/{letter_id}",
        response_model=schemas.DeadLetterDetail,
        tags=["operator"],
        responses={**unauthorized, **NO_LETTER},
    )
    def show_letter(letter_id: str) -> schemas.DeadLetterDetail:
        """One dead letter in full, by its id or the first characters of it."""
        try:
            letter = ops.show(letter_id)
        except KeyError as exc:
            raise NoLetter(exc.args[0]) from None
        return schemas.DeadLetterDetail.model_validate(letter)

    @api.post(
        "/dead-letters/{letter_id}/redrive",
        response_model=schemas.Redriven,
        tags=["operator"],
        responses={
            **unauthorized,
            **NO_LETTER,
            409: {"description": "the letter is not DEAD, or cannot be sent again (its message was truncated)"},
        },
    )
    def redrive_one(letter_id: str) -> schemas.Redriven:
        """Send one dead letter again, its retries reset."""
        try:
            done = ops.redrive(letter_id)
        except KeyError as exc:
            raise NoLetter(exc.args[0]) from None
        except ValueError as exc:
            raise Conflict(exc.args[0]) from None
        letter = schemas.resend(Resend.of(done.letter))
        return schemas.Redriven(letter=letter, removed_from_broker=done.removed_from_broker)


def _parked(api: FastAPI, ops: DeadLetterOps, bulk: BulkOps, unauthorized: dict[int | str, Any]) -> None:
    @api.get("/parked", response_model=schemas.ParkedList, tags=["operator"], responses=unauthorized)
    def list_parked() -> schemas.ParkedList:
        """Sagas parked NEEDS_ATTENTION, longest parked first: what they failed with, the
        compensation they wait on, since when, and the dead letters a retry sends again."""
        return schemas.ParkedList(orders=[schemas.parked(p) for p in bulk.parked()])

    @api.post(
        "/parked/retry",
        response_model=schemas.RetryPreview | schemas.RetryDone,
        tags=["operator"],
        responses=bulk_responses(unauthorized, schemas.StaleRetry),
    )
    def retry_many(body: schemas.RetryRequest) -> Any:
        """Without ``confirm``: the preview of retrying the parked sagas named (every one if
        none is) — each with the dead letters it sends again and whether they call the
        payment gateway or the carrier — with its ``token``; nothing is done. With
        ``confirm: <token>``: resume them."""
        return preview_or_act(
            body.confirm,
            lambda: schemas.retry_preview(bulk.preview_retry(body.order_ids)),
            lambda token: schemas.retry_done(bulk.retry(body.order_ids, token)),
            lambda exc: schemas.StaleRetry(detail=str(exc), preview=schemas.retry_preview(exc.preview)),
        )

    @api.post(
        "/parked/{order_id}/retry",
        response_model=schemas.RetriedOrder,
        tags=["operator"],
        responses={
            **unauthorized,
            404: {"description": "no such order"},
            409: {"description": "the order is not parked (NEEDS_ATTENTION)"},
        },
    )
    def retry_one(order_id: str) -> schemas.RetriedOrder:
        """Resume one parked saga: its dead letters are sent again and the compensation goes
        on from the step that could not finish."""
        try:
            letters = ops.retry_order(order_id)
        except NotParked as exc:
            raise Conflict(str(exc)) from None
        return schemas.RetriedOrder(order_id=order_id, redriven=[d.id for d in letters])
