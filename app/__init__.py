"""Checkout Saga: an event-driven checkout on Celery.

The public Python API::

    import app
    order_id = app.place_order("cust-1", [{"sku": "MUG-01", "qty": 2}])
    view = app.wait_for_order(order_id)
    view.status, view.reason, view.total_cents, view.events
"""

from app.api import (
    CatalogItem,
    get_order,
    list_catalog,
    place_order,
    start,
    stop,
    validate_order,
    wait_for_order,
)
from app.domain.errors import Busy, InvalidOrder, OrderNotFound
from app.services.order import OrderView, TimelineEntry

__all__ = [
    "Busy",
    "CatalogItem",
    "InvalidOrder",
    "OrderNotFound",
    "OrderView",
    "TimelineEntry",
    "get_order",
    "list_catalog",
    "place_order",
    "start",
    "stop",
    "validate_order",
    "wait_for_order",
]
