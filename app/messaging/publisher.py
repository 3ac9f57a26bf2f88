"""The relay's way onto the broker (:class:`app.persistence.outbox.Publisher` over Celery)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Producer

from app.messaging import tracing
from config.celery import EXCHANGE


class CeleryPublisher:
    """Sends each committed event to a consumer task, under the event's own message id."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    #: An event that cannot be published at once stays in the outbox for the sweep, so the
    #: relay does not wait for the broker the way a saga's next step does.
    retry_policy: dict[str, Any] = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        # sent in the trace of the transaction that wrote the event, however late (tracing on)
        traceparent = body.get("traceparent")
        with tracing.continued(traceparent if isinstance(traceparent, str) else None):
            self.app.send_task(
                task, args=(body,), task_id=message_id, ignore_result=True, retry_policy=self.retry_policy
            )


def publish_raw(
    app: Celery,
    body: bytes,
    *,
    routing_key: str,
    headers: dict[str, Any],
    content_type: str | None,
    content_encoding: str | None,
) -> None:
    """Send a message body as it was received (a dead letter that was not a readable task
    message), to the system's exchange, retrying while the broker reconnects."""
    with app.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=EXCHANGE,
            routing_key=routing_key,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            declare=[EXCHANGE],
            retry=True,
        )
