"""Who handles what: each event type and the tasks it triggers. The one table of it, per
saga mode.

The relay (``app/persistence/outbox.py``) publishes every event, after the transaction that wrote it
commits, to each task listed for its type. Consumers are idempotent by event id (or, for
a saga step, by ``(order, step)``).

* Orchestration: a Celery canvas drives the steps; events only tell the order service how
  its saga went, and the order's own events finish the stock's story.
* Choreography: no canvas. Inventory and payment act on ``OrderPlaced``; shipping joins
  ``OrderPlaced``, ``InventoryReserved`` and ``PaymentAuthorized`` in its own table and
  schedules once it has all three; payment captures on ``ShipmentScheduled``; the order
  completes on ``PaymentCaptured``. A failure event (or ``OrderCancelled``) makes every
  service undo its own part; the order service projects status and reason from events.
"""

from __future__ import annotations

from app.domain.events import FAILURE_EVENTS, REGISTRY

ORCHESTRATION = "orchestration"
CHOREOGRAPHY = "choreography"
MODES = (ORCHESTRATION, CHOREOGRAPHY)

#: The order service follows every other service's events to keep the saga's memory.
_ORDER_FOLLOWS = ("order.record",)

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "OrderPlaced": ("order.start",),
    "OrderCompleted": ("inventory.commit",),
    "OrderCancelled": ("inventory.release_on_cancel",),
    **{name: _ORDER_FOLLOWS for name, cls in REGISTRY.items() if cls.SERVICE != "order"},
}

#: Each service's own compensation, run on any failure event and on OrderCancelled.
UNDO_OWN_PART = ("inventory.undo", "payment.undo", "shipping.undo")

CHOREOGRAPHY_SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    **{name: _ORDER_FOLLOWS for name, cls in REGISTRY.items() if cls.SERVICE != "order"},
    "OrderPlaced": ("inventory.reserve_on_placed", "payment.authorize_on_placed", "shipping.join"),
    "InventoryReserved": (*_ORDER_FOLLOWS, "shipping.join"),
    "PaymentAuthorized": (*_ORDER_FOLLOWS, "shipping.join"),
    "ShipmentScheduled": (*_ORDER_FOLLOWS, "payment.capture_on_scheduled"),
    "PaymentCaptured": (*_ORDER_FOLLOWS, "order.complete_on_captured"),
    **{name: (*_ORDER_FOLLOWS, *UNDO_OWN_PART) for name in sorted(FAILURE_EVENTS)},
    "OrderCompleted": ("inventory.commit",),
    "OrderCancelled": ("inventory.release_on_cancel", *UNDO_OWN_PART),
}

#: The consumers that run a saga step (idempotent by ``(order, step)`` in their service's
#: steps table, with no inbox): consumer -> the steps whose record shows it has acted — its
#: own step, or the compensation that undid (or prevented) it. Once one of them is recorded
#: for an order, the consumer needs none of the order's events again (the sweeper re-sends an
#: event only to the consumers that show no sign of it). Every other consumer keeps an inbox
#: of the events it handled.
CONSUMER_STEPS: dict[str, tuple[str, ...]] = {
    "inventory.reserve_on_placed": ("reserve_inventory", "release_inventory"),
    "payment.authorize_on_placed": ("authorize_payment", "void_payment"),
    "shipping.join": ("schedule_shipping", "cancel_shipment"),
    "payment.capture_on_scheduled": ("capture_payment", "refund_payment"),
    "order.complete_on_captured": ("complete_order",),
    "inventory.undo": ("release_inventory",),
    "payment.undo": ("void_payment",),  # refunds first, voids last
    "shipping.undo": ("cancel_shipment",),
}

TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    ORCHESTRATION: SUBSCRIPTIONS,
    CHOREOGRAPHY: CHOREOGRAPHY_SUBSCRIPTIONS,
}


def subscriptions(mode: str = ORCHESTRATION) -> dict[str, tuple[str, ...]]:
    """The subscription table of a saga mode."""
    try:
        return TABLES[mode]
    except KeyError:
        raise ValueError(f"unknown saga mode {mode!r}; one of: {', '.join(MODES)}") from None


def consumers_of(event_type: str, mode: str = ORCHESTRATION) -> tuple[str, ...]:
    return subscriptions(mode).get(event_type, ())
