"""Checkout Saga: an event-driven checkout on Celery.

The public Python API::

    import app
    order_id = app.place_order("cust-1", [{"sku": "MUG-01", "qty": 2}])
    view = app.wait_for_order(order_id)
    view.status, view.reason, view.total_cents, view.events

Each name is loaded on first use, so ``python -m app --help`` (and a command that needs
none of it) starts without loading the system.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from app.domain.errors import Busy, IdempotencyKeyReused, InvalidOrder, OrderNotFound
    from app.services.order import OrderView, TimelineEntry

#: Where each public name lives.
_HOMES = {
    **dict.fromkeys(
        (
            "CatalogItem",
            "get_order",
            "list_catalog",
            "place_order",
            "start",
            "stop",
            "validate_order",
            "wait_for_order",
        ),
        "app.api",
    ),
    **dict.fromkeys(("Busy", "IdempotencyKeyReused", "InvalidOrder", "OrderNotFound"), "app.domain.errors"),
    **dict.fromkeys(("OrderView", "TimelineEntry"), "app.services.order"),
}

__all__ = [
    "Busy",
    "CatalogItem",
    "IdempotencyKeyReused",
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


def __getattr__(name: str) -> Any:
    """A public name, loaded from its home on first use (and a submodule, as ``app.api``)."""
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
    elif not name.startswith("_"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
