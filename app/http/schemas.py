"""The JSON the HTTP API takes and gives, and how an order's view becomes it."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.domain.states import OrderStatus
from app.domain.values import Address, Line
from app.operations import bulk
from app.persistence.db import as_utc
from app.persistence.deadletters import DeadLetter
from app.services.order import OrderView, TimelineEntry

#: What a route taking a JSON body may answer when the body is not text (FastAPI's 400).
UNREADABLE_BODY: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not UTF-8 text, so not JSON; nothing written"}
}


class OrderRequest(BaseModel):
    """The body of ``POST /orders``: the arguments of ``place_order`` (the idempotency key
    comes in the ``Idempotency-Key`` header). Only the JSON types are checked here; what the
    values may be is checked by ``validate_order``, as for every caller."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cust-1",
                    "items": [{"sku": "MUG-01", "qty": 2}],
                    "payment_token": "tok_ok",
                    "ship_to": {"country": "FR"},
                    "currency": "EUR",
                }
            ]
        },
    )

    customer_id: str
    items: list[dict[str, Any]] = Field(description='order lines: [{"sku": "MUG-01", "qty": 2}, ...]')
    payment_token: str = Field("tok_ok", description="tok_ok, tok_declined, tok_flaky or tok_down")
    ship_to: dict[str, Any] | None = Field(
        None, description='{"country": "FR", "name", "line1", "city", "postal_code"}; a default address if absent'
    )
    currency: str = "EUR"


class Event(BaseModel):
    """One event of the order's story."""

    model_config = ConfigDict(from_attributes=True)

    type: str
    service: str
    time: datetime
    step: str | None
    outcome: str | None
    compensation: bool
    attempts: int | None
    duration_seconds: float | None


class Order(BaseModel):
    """An order's view, as ``GET /orders/{id}`` answers it."""

    model_config = ConfigDict(from_attributes=True)

    order_id: str
    customer_id: str
    status: OrderStatus
    reason: str | None
    attention: str | None = Field(description="why a NEEDS_ATTENTION saga is parked")
    total_cents: int
    currency: str
    lines: list[Line]
    ship_to: Address
    steps: dict[str, str]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    saga_version: int = Field(description="the version of the saga definition the order started under, and follows")
    events: list[Event]


class OrderSummary(BaseModel):
    """One order of a list."""

    order_id: str
    customer_id: str
    status: OrderStatus
    reason: str | None
    total_cents: int
    currency: str
    created_at: datetime
    finished_at: datetime | None


class OrderPage(BaseModel):
    """Orders, newest first, and the address of the next page (None on the last)."""

    orders: list[OrderSummary]
    next: str | None


class DeadLetterSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    service: str
    task: str | None
    status: str
    reason: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime


class Timeline(BaseModel):
    """An order's story: its events, oldest first, and the dead letters of its messages."""

    order_id: str
    status: OrderStatus
    events: list[Event]
    dead_letters: list[DeadLetterSummary]


class StatusChange(BaseModel):
    """The data of one ``status`` Server-Sent Event."""

    order_id: str
    status: OrderStatus
    reason: str | None
    attention: str | None
    steps: dict[str, str]


class HealthCheck(BaseModel):
    name: str
    ok: bool
    detail: str


class Health(BaseModel):
    ok: bool
    checks: list[HealthCheck]


def event(entry: TimelineEntry) -> Event:
    return Event.model_validate(entry)


def order(view: OrderView) -> Order:
    return Order.model_validate(view)


def summary(row: dict[str, Any]) -> OrderSummary:
    """An order of ``OrderService.find``'s rows."""
    finished = row["finished_at"]
    return OrderSummary(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        status=row["status"],
        reason=row["reason"],
        total_cents=row["total_cents"],
        currency=row["currency"],
        created_at=as_utc(row["created_at"]),
        finished_at=None if finished is None else as_utc(finished),
    )


def timeline(view: OrderView, letters: list[DeadLetter]) -> Timeline:
    return Timeline(
        order_id=view.order_id,
        status=view.status,
        events=[event(e) for e in view.events],
        dead_letters=[DeadLetterSummary.model_validate(letter) for letter in letters],
    )


def status_change(view: OrderView) -> StatusChange:
    return StatusChange(
        order_id=view.order_id,
        status=view.status,
        reason=view.reason,
        attention=view.attention,
        steps={step: str(outcome) for step, outcome in view.steps.items()},
    )


class DeadLetterItem(DeadLetterSummary):
    """One dead letter of a list."""

    queue: str
    order_id: str | None


class DeadLetterDetail(DeadLetterItem):
    """One dead letter in full: what failed, and the summary of its traceback."""

    error: str
    traceback: str


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterItem]  # oldest first


class Resend(BaseModel):
    """A dead letter that would be sent again, the task it runs, and what outside system
    (``payment gateway``, ``carrier``) that task calls; ``blocked`` says why it cannot be sent."""

    id: str
    queue: str
    task: str | None
    order_id: str | None
    reason: str
    external: str | None = Field(description="the outside system the task calls: payment gateway, carrier, or none")
    calls_external: bool
    blocked: str | None = Field(description="why it cannot be sent again (it is passed over), if it cannot")


class Redriven(BaseModel):
    """A dead letter sent again, retries reset."""

    letter: Resend
    removed_from_broker: bool = Field(description="RabbitMQ: its copy was taken out of <queue>.dlq")


class LetterFilter(BaseModel):
    """Which dead letters (still DEAD): each field given must match; none selects every one."""

    model_config = ConfigDict(extra="forbid")

    letter_id: str | None = Field(None, max_length=64, description="this dead letter (its whole id)")
    queue: str | None = Field(None, max_length=64)
    task: str | None = Field(None, max_length=128)
    order_id: str | None = Field(None, max_length=64)
    reason: str | None = Field(None, max_length=255, description="a part of the reason, any case")


class RedriveRequest(LetterFilter):
    """The body of ``POST /dead-letters/redrive``: without ``confirm``, the preview; with
    the preview's ``token`` as ``confirm``, the act."""

    confirm: str | None = Field(None, max_length=128, description="the token of the preview to act on")


class RedrivePreview(BaseModel):
    """What a redrive with this filter would send; nothing was sent. Act with ``token``."""

    filter: LetterFilter
    count: int
    external_count: int = Field(description="of them, how many call the payment gateway or the carrier")
    letters: list[Resend]
    token: str


class NotSent(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    why: str


class RedriveDone(BaseModel):
    redriven: list[Resend]
    not_sent: list[NotSent]


class StaleRedrive(BaseModel):
    """The selection changed since the preview: nothing was sent; here is the new preview."""

    detail: str
    preview: RedrivePreview


class ParkedOrder(BaseModel):
    """A saga parked NEEDS_ATTENTION, and the dead letters its retry sends again."""

    order_id: str
    reason: str | None = Field(description="what the saga failed with")
    waiting_on: str | None = Field(description="the compensation that could not finish, and why")
    since: datetime
    letters: list[Resend]


class ParkedList(BaseModel):
    orders: list[ParkedOrder]


class RetriedOrder(BaseModel):
    """A parked saga resumed: its dead letters were sent again."""

    order_id: str
    redriven: list[str] = Field(description="the ids of the dead letters sent again")


class RetryRequest(BaseModel):
    """The body of ``POST /parked/retry``: without ``confirm``, the preview; with the
    preview's ``token`` as ``confirm``, the act."""

    model_config = ConfigDict(extra="forbid")

    order_ids: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=500, description="these parked orders; absent: every one"
    )
    confirm: str | None = Field(None, max_length=128, description="the token of the preview to act on")


class RetryPreview(BaseModel):
    """What a retry of these orders would do; nothing was done. Act with ``token``."""

    order_ids: list[str] | None
    count: int
    external_count: int = Field(description="dead letters to send that call the payment gateway or the carrier")
    orders: list[ParkedOrder]
    not_parked: list[str] = Field(description="of the orders asked for, those not parked (or unknown)")
    token: str


class RetryDone(BaseModel):
    retried: list[ParkedOrder]
    not_retried: list[NotSent]


class StaleRetry(BaseModel):
    """The selection changed since the preview: nothing was done; here is the new preview."""

    detail: str
    preview: RetryPreview


def resend(item: bulk.Resend) -> Resend:
    letter = item.letter
    return Resend(
        id=letter.id,
        queue=letter.queue,
        task=letter.task,
        order_id=letter.order_id,
        reason=letter.reason,
        external=item.external,
        calls_external=item.external is not None,
        blocked=item.blocked,
    )


def redrive_preview(preview: bulk.RedrivePreview) -> RedrivePreview:
    letters = [resend(r) for r in preview.letters]
    return RedrivePreview(
        filter=LetterFilter.model_validate(asdict(preview.filter)),
        count=len(letters),
        external_count=sum(r.calls_external for r in letters),
        letters=letters,
        token=preview.token,
    )


def redrive_done(done: bulk.Redrove) -> RedriveDone:
    return RedriveDone(
        redriven=[resend(r) for r in done.redriven],
        not_sent=[NotSent.model_validate(n) for n in done.not_sent],
    )


def parked(item: bulk.Parked) -> ParkedOrder:
    view = item.view
    return ParkedOrder(
        order_id=view.order_id,
        reason=view.reason,
        waiting_on=view.attention,
        since=view.updated_at,
        letters=[resend(r) for r in item.letters],
    )


def retry_preview(preview: bulk.RetryPreview) -> RetryPreview:
    orders = [parked(p) for p in preview.orders]
    return RetryPreview(
        order_ids=None if preview.order_ids is None else list(preview.order_ids),
        count=len(orders),
        external_count=sum(r.calls_external for o in orders for r in o.letters),
        orders=orders,
        not_parked=list(preview.not_parked),
        token=preview.token,
    )


def retry_done(done: bulk.Retried) -> RetryDone:
    return RetryDone(
        retried=[parked(p) for p in done.retried],
        not_retried=[NotSent.model_validate(n) for n in done.not_retried],
    )
