"""Domain events: immutable facts, one envelope, one registry.

Each event type is a pydantic model registered under an explicit name (never an import
path), so moving a module never strands a message in flight. Money is integer minor units
with an ISO currency code. ``Envelope`` is what travels on the wire and what every
service's event log (its outbox) stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.domain.values import MAX_INT, Address, Line

CURRENCY_PATTERN = r"^[A-Z]{3}$"


class Event(BaseModel):
    """Base of every event payload. Subclasses set ``TYPE``, ``TOPIC`` and ``VERSION``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str]
    TOPIC: ClassVar[str]
    VERSION: ClassVar[int] = 1
    SERVICE: ClassVar[str]

    order_id: str = Field(min_length=1, max_length=64)


REGISTRY: dict[str, type[Event]] = {}

#: The first part of a topic names the domain; this says which service owns it.
TOPIC_DOMAINS: dict[str, str] = {
    "orders": "order",
    "inventory": "inventory",
    "payments": "payment",
    "shipping": "shipping",
}

E = TypeVar("E", bound=type[Event])


def event(type_: str, topic: str, version: int = 1) -> Callable[[E], E]:
    """Register an event class under its wire name."""

    def register(cls: E) -> E:
        if type_ in REGISTRY:
            raise ValueError(f"event type {type_!r} registered twice")
        cls.TYPE, cls.TOPIC, cls.VERSION = type_, topic, version
        cls.SERVICE = TOPIC_DOMAINS[topic.split(".", 1)[0]]
        REGISTRY[type_] = cls
        return cls

    return register


# --- order ---------------------------------------------------------------------------


@event("OrderPlaced", "orders.order.placed")
class OrderPlaced(Event):
    customer_id: str = Field(min_length=1, max_length=64)
    ship_to: Address
    lines: tuple[Line, ...]
    total_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)
    #: only in choreography, where payment authorizes from this event (an opaque gateway token)
    payment_token: str | None = Field(None, min_length=1, max_length=64)


@event("OrderCompleted", "orders.order.completed")
class OrderCompleted(Event):
    total_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)


@event("OrderCancelled", "orders.order.cancelled")
class OrderCancelled(Event):
    reason: str = Field(min_length=1, max_length=32)


# --- inventory -----------------------------------------------------------------------


@event("InventoryReserved", "inventory.stock.reserved")
class InventoryReserved(Event):
    lines: tuple[Line, ...]


@event("InventoryReservationFailed", "inventory.stock.reservation_failed")
class InventoryReservationFailed(Event):
    reason: str = Field(min_length=1, max_length=32)
    sku: str | None = Field(None, max_length=32)


@event("InventoryReleased", "inventory.stock.released")
class InventoryReleased(Event):
    lines: tuple[Line, ...]


@event("InventoryCommitted", "inventory.stock.committed")
class InventoryCommitted(Event):
    lines: tuple[Line, ...]


# --- payment -------------------------------------------------------------------------


@event("PaymentAuthorized", "payments.payment.authorized")
class PaymentAuthorized(Event):
    amount_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)


@event("PaymentDeclined", "payments.payment.declined")
class PaymentDeclined(Event):
    reason: str = Field(min_length=1, max_length=32)


@event("PaymentCaptured", "payments.payment.captured")
class PaymentCaptured(Event):
    amount_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)


@event("PaymentVoided", "payments.payment.voided")
class PaymentVoided(Event):
    amount_cents: int = Field(ge=0, le=MAX_INT)


@event("PaymentRefunded", "payments.payment.refunded")
class PaymentRefunded(Event):
    amount_cents: int = Field(ge=0, le=MAX_INT)


@event("PaymentFailed", "payments.payment.failed")
class PaymentFailed(Event):
    reason: str = Field(min_length=1, max_length=32)
    step: str | None = Field(None, max_length=64)


# --- shipping ------------------------------------------------------------------------


@event("ShipmentScheduled", "shipping.shipment.scheduled")
class ShipmentScheduled(Event):
    tracking_ref: str = Field(min_length=1, max_length=64)
    country: str = Field(min_length=2, max_length=2)


@event("ShipmentFailed", "shipping.shipment.failed")
class ShipmentFailed(Event):
    reason: str = Field(min_length=1, max_length=32)


@event("ShipmentCancelled", "shipping.shipment.cancelled")
class ShipmentCancelled(Event):
    pass


#: Failure events carry the reason an order is cancelled with.
FAILURE_EVENTS: frozenset[str] = frozenset(
    {"InventoryReservationFailed", "PaymentDeclined", "PaymentFailed", "ShipmentFailed"}
)


class UnreadableEvent(ValueError):
    """An event this code has no model for: an unknown type, or a version other than the
    one registered for its type."""


class Envelope(BaseModel):
    """The one shape every event has on the wire and in the log.

    A tolerant reader of its own metadata: a field it does not know (one a newer producer
    added, like ``attempts`` and ``duration_ms`` were) is ignored, so adding optional
    envelope metadata never breaks a worker still running older code. The payload is not:
    :meth:`open` validates it strictly against the model registered for its type and
    version, and every event consumer does so before acting (``TaskKit.parse`` in
    ``app/messaging/tasks/kit.py``).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(min_length=1, max_length=64)
    event_type: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1, le=MAX_INT)
    topic: str = Field(min_length=1, max_length=128)
    occurred_at: datetime
    key: str = Field(min_length=1, max_length=64)
    correlation_id: str = Field(min_length=1, max_length=64)
    causation_id: str | None = Field(None, max_length=128)
    payload: dict[str, Any]
    # Optional metadata of an event a saga step or compensation emitted (see app/persistence/attempts.py):
    # how many attempts the step took, and how long from its first attempt's start to this event.
    attempts: int | None = Field(None, ge=1, le=MAX_INT)
    duration_ms: int | None = Field(None, ge=0, le=MAX_INT)
    # The W3C trace context of the transaction that wrote the event, when tracing is on: its
    # delivery, relayed at once or swept late, joins that trace; a replay links to it.
    traceparent: str | None = Field(None, max_length=128)

    @classmethod
    def wrap(
        cls,
        evt: Event,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
        attempts: int | None = None,
        duration_ms: int | None = None,
        traceparent: str | None = None,
    ) -> Envelope:
        return cls(
            event_id=str(uuid.uuid4()),
            event_type=evt.TYPE,
            version=evt.VERSION,
            topic=evt.TOPIC,
            occurred_at=occurred_at or datetime.now(UTC),
            key=evt.order_id,
            correlation_id=correlation_id or evt.order_id,
            causation_id=causation_id,
            payload=evt.model_dump(mode="json"),
            attempts=attempts,
            duration_ms=duration_ms,
            traceparent=traceparent,
        )

    @property
    def service(self) -> str:
        return REGISTRY[self.event_type].SERVICE

    def open(self) -> Event:
        """The typed payload, validated against the model registered for the event's type.

        Raises :class:`UnreadableEvent` for an unknown type or a version other than the
        registered one (a newer producer's: this code cannot know what it means), and
        ``ValidationError`` for a payload that does not fit the model — a field missing or
        wrong, or one the model does not have (payload models forbid unknown fields).
        """
        cls = REGISTRY.get(self.event_type)
        if cls is None:
            raise UnreadableEvent(f"unknown event type {self.event_type!r}")
        if self.version != cls.VERSION:
            raise UnreadableEvent(
                f"{self.event_type} version {self.version}: this code reads version {cls.VERSION} only"
            )
        return cls.model_validate(self.payload)

    def to_wire(self) -> dict[str, Any]:
        wire = self.model_dump(mode="json")
        for name in OPTIONAL_METADATA:  # absent rather than null: such an event reads as before
            if wire[name] is None:
                del wire[name]
        return wire


#: Envelope fields added after version 1 of the wire format; every one is optional.
OPTIONAL_METADATA: tuple[str, ...] = ("attempts", "duration_ms", "traceparent")
