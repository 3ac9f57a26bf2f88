"""Messaging: the only package that imports Celery or kombu.

The Celery app's configuration and tasks, the publisher and the saga dispatcher, the canvas
builder, the worker's consumer, message signing, correlation ids, queue depths and the
monitoring app. The layers above it (operations, the composition root) name Celery's app
type through :data:`Celery` here, and the broker being out of reach as
:class:`BrokerUnreachable` (kombu's ``OperationalError``).
"""

from celery import Celery
from kombu.exceptions import OperationalError as BrokerUnreachable

__all__ = ["BrokerUnreachable", "Celery"]
