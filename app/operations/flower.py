"""Flower, Celery's web monitor, on this system's broker: ``python -m app.operations.flower`` (``make flower``).

* Broker, key namespace and queues come from the same settings as every other process
  (:func:`config.celery.celery_config`), so Flower sees this installation's workers only.
  It needs no database.
* HTTP basic auth is mandatory: ``CHECKOUT_FLOWER_USER`` and ``CHECKOUT_FLOWER_PASSWORD``.
  Without them, Flower is not started.
* Flower serves ``/metrics`` (Prometheus: worker names, task names, counts) to anyone even
  with basic auth on. Here that route asks for the same credentials; a Prometheus scrape
  job gives them with ``basic_auth``. ``/healthcheck`` (it answers ``OK``) stays open.
* It listens on ``CHECKOUT_FLOWER_ADDRESS``, 127.0.0.1 unless set.

Flower turns the workers' task events on itself (it broadcasts ``enable_events`` every
five seconds), so the workers need no ``-E``.
"""

from __future__ import annotations

import os
from typing import Any

from flower import urls
from flower.options import default_options
from flower.views.monitor import Metrics
from tornado import web

from app.messaging.monitor import monitor_app
from config.settings import Settings, load_settings

METRICS_ROUTE = r"/metrics"

#: Flower's own variables that would contradict the settings; each names what replaces it.
REPLACED_BY_SETTINGS = {
    "FLOWER_BASIC_AUTH": "CHECKOUT_FLOWER_USER and CHECKOUT_FLOWER_PASSWORD",
    "FLOWER_ADDRESS": "CHECKOUT_FLOWER_ADDRESS",
    "FLOWER_PORT": "CHECKOUT_FLOWER_PORT",
}


class AuthenticatedMetrics(Metrics):  # type: ignore[misc]  # flower ships no types
    """Flower's Prometheus endpoint, behind the credentials that guard the rest of Flower."""

    @web.authenticated
    async def get(self) -> None:
        await super().get()


def protect_metrics(handlers: list[Any]) -> None:
    """Route ``/metrics`` to :class:`AuthenticatedMetrics` in Flower's URL table, in place
    (Flower reads the table when its application is built). Raises if the route is not
    there, so a Flower release that moves it cannot leave the endpoint open unnoticed."""
    for i, handler in enumerate(handlers):
        if isinstance(handler, tuple) and handler[0] == METRICS_ROUTE:
            if handler[1] not in (Metrics, AuthenticatedMetrics):
                break
            handlers[i] = (METRICS_ROUTE, AuthenticatedMetrics, *handler[2:])
            return
    raise RuntimeError(f"Flower's {METRICS_ROUTE} route is not where this version expects it; not starting")


def basic_auth(settings: Settings) -> str:
    """``user:password`` for Flower, or SystemExit saying what to set."""
    user = settings.flower_user
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if not user or not password:
        raise SystemExit(
            "Flower not started: set CHECKOUT_FLOWER_USER and CHECKOUT_FLOWER_PASSWORD "
            "(HTTP basic auth for its pages, its API and /metrics)"
        )
    return f"{user}:{password}"


def main() -> int:
    settings = load_settings()
    if settings.embedded:
        raise SystemExit(
            "Flower not started: CHECKOUT_BROKER_URL is the in-process memory:// broker, which no other "
            "process can watch; set it to the Redis or RabbitMQ the workers use"
        )
    credentials = basic_auth(settings)
    for variable, replacement in REPLACED_BY_SETTINGS.items():
        if variable in os.environ:
            raise SystemExit(f"Flower not started: unset {variable}; {replacement} set it here")
    # Set on Flower's options object, not on its command line or environment, where a
    # comma would split the password into two credentials (and ps would show it).
    default_options.basic_auth = [credentials]
    protect_metrics(urls.handlers)
    app = monitor_app(settings)
    app.set_current()  # Flower's task-result page asks the current app for the result backend
    code = app.start(["flower", f"--address={settings.flower_address}", f"--port={settings.flower_port}"])
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
