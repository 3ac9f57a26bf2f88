"""Who handles what: each event type and the tasks it triggers. The one table of it.

The relay (``app/bus.py``) publishes every event, after the transaction that wrote it
commits, to each task listed here. Consumers are idempotent by event id.
"""

from __future__ import annotations

from app.events import REGISTRY

#: The order service follows every other service's events to keep the saga's memory.
_ORDER_FOLLOWS = ("order.record",)

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "OrderPlaced": ("order.start",),
    "OrderCompleted": ("inventory.commit",),
    "OrderCancelled": ("inventory.release_on_cancel",),
    **{name: _ORDER_FOLLOWS for name, cls in REGISTRY.items() if cls.SERVICE != "order"},
}


def consumers_of(event_type: str) -> tuple[str, ...]:
    return SUBSCRIPTIONS.get(event_type, ())
