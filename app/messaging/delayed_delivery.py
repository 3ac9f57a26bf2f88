"""RabbitMQ's native delayed delivery (quorum queues), set up once per consumer start.

With quorum queues, Celery sends a retry's countdown through RabbitMQ's delayed-delivery
exchanges, and each worker's consumer declares them, and binds its queues to them, every
time it starts, reconnections included. Celery's own step does it on *every* URL of the
broker failover list, each with three retries 1, 3 and 5 s apart. The nodes of a list are
one cluster, whose exchanges, queues and bindings every node shares, so all that is needed
is one node. Worse, it happens while the consumer's own connection is open and before its
event loop runs, so that connection sends no heartbeat meanwhile: with a node of the list
down, the 9 s spent retrying it plus the rest of the start-up outlast RabbitMQ's heartbeat
timeout, the broker closes the connection, the consumer starts again, and it never gets to
consume at all.

This step sets it up on the node the consumer has just connected to, which is up, and
falls back to the other nodes of the list, each tried once, only if that fails.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer.delayed_delivery import RETRIED_EXCEPTIONS, DelayedDelivery
from kombu.utils.url import maybe_sanitize_url, parse_url

log = logging.getLogger(__name__)


def node_of(url: str) -> tuple[str, int | None]:
    parts = parse_url(url)
    return str(parts.get("hostname") or ""), parts.get("port")


def setup_order(urls: list[str], connected: tuple[str, int | None] | None) -> list[str]:
    """The broker URLs to try, the node the consumer is connected to first (the rest kept in
    the list's order)."""
    if connected is None:
        return list(urls)
    return sorted(urls, key=lambda url: node_of(url) != connected)


class DelayedDeliveryOnce(DelayedDelivery):  # type: ignore[misc]
    """Celery's ``DelayedDelivery`` step, done on one node of the cluster (see the module)."""

    def start(self, c: Any) -> None:
        app = c.app
        try:
            self._validate_configuration(app)
        except ValueError as exc:
            log.critical("Configuration validation failed: %s", exc)
            raise
        urls: list[str] = list(self._validate_broker_urls(app.conf.broker_url))
        conn = getattr(c, "connection", None)
        connected = (str(conn.hostname), conn.port) if conn is not None and conn.hostname else None
        for url in setup_order(urls, connected):
            try:
                self._setup_delayed_delivery(c, url)
            except RETRIED_EXCEPTIONS as exc:
                log.warning("delayed delivery could not be set up through %s: %s", maybe_sanitize_url(url), exc)
                continue
            return
        log.critical("delayed delivery could not be set up through any broker URL: retries with a countdown will fail")
