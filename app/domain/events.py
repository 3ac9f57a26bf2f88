"""Domain events: immutable facts, one envelope, one registry.

Each event type is a pydantic model registered under an explicit name (never an import
path), so moving a module never strands a message in flight. Money is integer minor units
with an ISO currency code. ``Envelope`` is what travels on the wire and what every
service's event log (its outbox) stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.domain.upcasting import can_write, downcast, upcast
from app.domain.values import MAX_INT, Address, Line, PostalAddress, PricedLine

CURRENCY_PATTERN = r"^[A-Z]{3}$"


class Event(BaseModel):
    """Base of every event payload. Subclasses set ``TYPE``, ``TOPIC`` and ``VERSION``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str]
    TOPIC: ClassVar[str]
    VERSION: ClassVar[int] = 1
    SERVICE: ClassVar[str]

    order_id: str = Field(min_length=1, max_length=64)


#: Each wire name's latest model: the version this code writes and what every reader sees.
REGISTRY: dict[str, type[Event]] = {}
#: Every version this code reads, by wire name and version: the latest and each earlier one,
#: which :mod:`app.domain.upcasting` lifts to the latest.
VERSIONS: dict[tuple[str, int], type[Event]] = {}

#: The first part of a topic names the domain; this says which service owns it.
TOPIC_DOMAINS: dict[str, str] = {
    "orders": "order",
    "inventory": "inventory",
    "payments": "payment",
    "shipping": "shipping",
}

E = TypeVar("E", bound=type[Event])


def event(type_: str, topic: str, version: int = 1) -> Callable[[E], E]:
    """Register an event class under its wire name and version. A type's versions are
    registered oldest first, each one more than the last; the last is the one written."""

    def register(cls: E) -> E:
        if (type_, version) in VERSIONS:
            raise ValueError(f"event type {type_!r} version {version} registered twice")
        latest = REGISTRY.get(type_)
        if version != (latest.VERSION + 1 if latest is not None else 1):
            raise ValueError(f"event type {type_!r}: version {version} does not follow {latest_version(type_)}")
        cls.TYPE, cls.TOPIC, cls.VERSION = type_, topic, version
        cls.SERVICE = TOPIC_DOMAINS[topic.split(".", 1)[0]]
        REGISTRY[type_] = VERSIONS[type_, version] = cls
        return cls

    return register


def latest_version(type_: str) -> int:
    """The version of ``type_`` this code writes (0 for a type it does not know)."""
    cls = REGISTRY.get(type_)
    return cls.VERSION if cls is not None else 0


# --- order ---------------------------------------------------------------------------


# Version 1, as written until version 2: lines without prices, and an address whose fields
# other than the country fall back to placeholders when absent. Read through the upcaster in
# app/domain/upcasting.py. No docstring: it would change v1's committed schema.
@event("OrderPlaced", "orders.order.placed")
class OrderPlacedV1(Event):
    model_config = ConfigDict(title="OrderPlaced")

    customer_id: str = Field(min_length=1, max_length=64)
    ship_to: Address
    lines: tuple[Line, ...]
    total_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)
    #: only in choreography, where payment authorizes from this event (an opaque gateway token)
    payment_token: str | None = Field(None, min_length=1, max_length=64)


@event("OrderPlaced", "orders.order.placed", version=2)
class OrderPlaced(Event):
    """Version 2: each line carries its unit price when the order was placed, and the address
    has every field (no placeholders)."""

    customer_id: str = Field(min_length=1, max_length=64)
    ship_to: PostalAddress
    lines: tuple[PricedLine, ...]
    total_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)
    #: only in choreography, where payment authorizes from this event (an opaque gateway token)
    payment_token: str | None = Field(None, min_length=1, max_length=64)

    def quantities(self) -> tuple[Line, ...]:
        """The lines without their prices: what stock is reserved and a shipment carries."""
        return tuple(Line(sku=line.sku, qty=line.qty) for line in self.lines)


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
    """An event this code has no model for: an unknown type, or a version newer than the
    latest registered for its type (or one it no longer reads)."""


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
        version: int | None = None,
    ) -> Envelope:
        """``evt`` in a new envelope; as an earlier ``version`` of its type (through the
        downcasters, :func:`app.domain.upcasting.downcast`) while its readers still read only
        that one (``CHECKOUT_EMIT_VERSIONS``)."""
        payload = evt.model_dump(mode="json")
        if version is not None and version != evt.VERSION:
            payload = downcast(evt.TYPE, evt.VERSION, payload, version)
        return cls(
            event_id=str(uuid.uuid4()),
            event_type=evt.TYPE,
            version=evt.VERSION if version is None else version,
            topic=evt.TOPIC,
            occurred_at=occurred_at or datetime.now(UTC),
            key=evt.order_id,
            correlation_id=correlation_id or evt.order_id,
            causation_id=causation_id,
            payload=payload,
            attempts=attempts,
            duration_ms=duration_ms,
            traceparent=traceparent,
        )

    @property
    def service(self) -> str:
        return REGISTRY[self.event_type].SERVICE

    def open(self) -> Event:
        """The typed payload in the latest version of its type, whatever version it was
        written in: validated against the model of its own version, then upcast
        (:func:`app.domain.upcasting.upcast`) and validated against the latest model.

        Raises :class:`UnreadableEvent` for an unknown type or a version this code has no
        model for — above all a newer producer's, which this code cannot know the meaning of
        — and ``ValidationError`` for a payload that does not fit its version's model: a
        field missing or wrong, or one the model does not have (payload models forbid
        unknown fields).
        """
        latest = REGISTRY.get(self.event_type)
        if latest is None:
            raise UnreadableEvent(f"unknown event type {self.event_type!r}")
        if self.version > latest.VERSION:
            raise UnreadableEvent(
                f"{self.event_type} v{self.version} is newer than this worker reads (up to v{latest.VERSION}): "
                "upgrade the consumer, then redrive"
            )
        written = VERSIONS.get((self.event_type, self.version))
        if written is None:
            raise UnreadableEvent(f"{self.event_type} v{self.version} is no longer read by this code")
        evt = written.model_validate(self.payload)
        if written is latest:
            return evt
        return latest.model_validate(upcast(self.event_type, self.version, self.payload))

    def upcast(self) -> Envelope:
        """This event with its payload upcast to the latest version of its type, unvalidated:
        what a reader of raw payload fields (the order projection's ``fold``) reads. An event
        of a type or version this code does not know is returned as it is."""
        latest = latest_version(self.event_type)
        if not 1 <= self.version < latest:
            return self
        return self.model_copy(
            update={"version": latest, "payload": upcast(self.event_type, self.version, self.payload)}
        )

    def to_wire(self) -> dict[str, Any]:
        wire = self.model_dump(mode="json")
        for name in OPTIONAL_METADATA:  # absent rather than null: such an event reads as before
            if wire[name] is None:
                del wire[name]
        return wire


class UnwritableVersion(ValueError):
    """``CHECKOUT_EMIT_VERSIONS`` names a type or a version this code cannot write."""


def emit_versions(requested: Mapping[str, int]) -> dict[str, int]:
    """``CHECKOUT_EMIT_VERSIONS`` checked against the code: each type known, and its version
    one this code can write it as (the latest, or one its downcasters reach).
    :class:`UnwritableVersion`, naming the entry, for any other; the latest itself is left
    out (nothing to do)."""
    checked = {}
    for type_, version in requested.items():
        latest = latest_version(type_)
        if latest == 0:
            raise UnwritableVersion(f"CHECKOUT_EMIT_VERSIONS: unknown event type {type_!r}")
        if not can_write(type_, latest, version):
            raise UnwritableVersion(
                f"CHECKOUT_EMIT_VERSIONS: {type_}={version}: this code writes {type_} v{latest} "
                "and cannot write that version"
            )
        if version != latest:
            checked[type_] = version
    return checked


#: Envelope fields added after version 1 of the wire format; every one is optional.
OPTIONAL_METADATA: tuple[str, ...] = ("attempts", "duration_ms", "traceparent")
