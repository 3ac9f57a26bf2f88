"""The Celery app a monitor uses (Flower): the system's broker, namespace and queues, no tasks."""

from __future__ import annotations

from celery import Celery

from app.messaging import signing
from config.celery import celery_config
from config.settings import Settings


def monitor_app(settings: Settings) -> Celery:
    """A Celery app for watching, not working: the system's broker, namespace and queues,
    and no tasks or database of its own."""
    app = Celery("checkout", set_as_current=False)
    app.conf.update(celery_config(settings))
    signing.install(app, settings)  # Flower's control messages are signed like everyone's
    return app
