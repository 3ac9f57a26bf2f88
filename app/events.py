"""The names an extension imports from ``app.events``, where they were before the package took its
layers: they live in :mod:`app.domain.events` now. New code imports them from there (or from
:mod:`app.extensions`, the extension author's one import)."""

from app.domain.events import (  # noqa: F401
    CURRENCY_PATTERN,
    FAILURE_EVENTS,
    MAX_INT,
    OPTIONAL_METADATA,
    REGISTRY,
    TOPIC_DOMAINS,
    Envelope,
    Event,
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderCompleted,
    OrderPlaced,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentFailed,
    PaymentRefunded,
    PaymentVoided,
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentScheduled,
    UnreadableEvent,
    event,
)
