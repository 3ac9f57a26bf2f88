"""Messaging: the only package that imports Celery or kombu.

The Celery app's configuration and tasks, the publisher and the saga dispatcher, the canvas
builder, the worker's consumer, message signing, correlation ids, queue depths and the
monitoring app. The layers above it (operations, the composition root) name Celery's app
type through :data:`Celery` here, and the broker being out of reach as
:class:`BrokerUnreachable` (kombu's ``OperationalError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery
    from kombu.exceptions import OperationalError as BrokerUnreachable

__all__ = ["BrokerUnreachable", "Celery"]


def __getattr__(name: str) -> Any:
    """Celery's app type and kombu's error, loaded on first use: a module of this package
    that needs neither (the log format, say) loads without Celery."""
    if name == "Celery":
        from celery import Celery

        return Celery
    if name == "BrokerUnreachable":
        from kombu.exceptions import OperationalError

        return OperationalError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
