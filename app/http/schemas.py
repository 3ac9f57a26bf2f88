"""The JSON the HTTP API takes and gives, and how an order's view becomes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.domain.states import OrderStatus
from app.domain.values import Address, Line
from app.persistence.db import as_utc
from app.persistence.deadletters import DeadLetter
from app.services.order import OrderView, TimelineEntry


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
        dead_letters=[
            DeadLetterSummary(
                id=letter.id,
                service=letter.service,
                task=letter.task,
                status=letter.status,
                reason=letter.reason,
                attempts=letter.attempts,
                first_failed_at=letter.first_failed_at,
                last_failed_at=letter.last_failed_at,
            )
            for letter in letters
        ],
    )


def status_change(view: OrderView) -> StatusChange:
    return StatusChange(
        order_id=view.order_id,
        status=view.status,
        reason=view.reason,
        attention=view.attention,
        steps={step: str(outcome) for step, outcome in view.steps.items()},
    )
