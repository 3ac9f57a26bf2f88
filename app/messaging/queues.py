"""What the broker says of the service queues: messages waiting and consumers, per queue.

Read by the metrics exporter (``app/operations/metrics.py``) and by the saga sweeper, which
re-drives a stalled saga only when nothing it waits for can still be queued.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from config.celery import dead_letter_queue_name
from config.settings import Settings

log = logging.getLogger("checkout.metrics")


def connect(conn: Any, timeout: float) -> None:
    """Connect ``conn`` (a kombu connection), trying each broker of a failover list once
    (``amqp://a;amqp://b;amqp://c``: a cluster's nodes) within ``timeout`` seconds in all.

    kombu moves to the next URL after each failed attempt; one retry, as for a single URL,
    would give up on a cluster whose first two nodes are down while the third answers."""
    conn.ensure_connection(max_retries=max(1, len(conn.alt) - 1), timeout=timeout)


def queue_depths(app: Celery, settings: Settings, timeout: float = 2.0) -> dict[str, tuple[int, int]]:
    """Queue name -> (messages waiting, consumers) for every service queue, and on RabbitMQ
    every ``<queue>.dlq``. Redis: the queue's list length (over its priority lists);
    RabbitMQ: a passive declare (nothing is created). Raises if the broker does not answer."""
    amqp = settings.broker_kind == "amqp"
    queues = settings.queues
    names = list(queues) + ([dead_letter_queue_name(s) for s in queues] if amqp else [])
    depths: dict[str, tuple[int, int]] = {}
    with app.connection_for_write() as conn:
        connect(conn, timeout)
        for name in names:
            if amqp:
                # a passive declare of a missing queue closes its channel: one channel each
                channel = conn.channel()
                try:
                    _, count, consuming = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:
                    log.info("metrics: queue %s is not declared (yet)", name)
                    continue
                finally:
                    _close_quietly(channel)
            else:
                # kombu's virtual transports: declaring creates nothing, and counts every priority list
                _, count, consuming = conn.default_channel.queue_declare(queue=name, passive=False)
            depths[name] = (int(count), int(consuming))
    return depths


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # already closed by the broker
        log.debug("metrics: channel already closed", exc_info=True)
