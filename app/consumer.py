"""The worker's message consumer: malformed messages become dead letters, not losses.

Celery acknowledges (drops) a message it cannot decode, and rejects one that names no
known task or is not a task message — on Redis that deletes it. This consumer first
records each such message in the dead-letter store (with why), then rejects it without
requeueing: RabbitMQ routes it to ``<queue>.dlq``; the worker carries on with the next.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

from config.settings import SERVICES

log = logging.getLogger("checkout.consumer")


def raw_message(message: Message) -> dict[str, Any]:
    """Everything needed to publish the message again, as JSON."""
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return {
        "kind": "raw",
        "body": base64.b64encode(body).decode(),
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": _jsonable(message.headers or {}),
        "properties": _jsonable({k: v for k, v in (message.properties or {}).items() if k != "delivery_info"}),
        "routing_key": (message.delivery_info or {}).get("routing_key"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def message_key(message: Message) -> str:
    task_id = (message.headers or {}).get("id")
    if task_id:
        return str(task_id)
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


class CheckoutConsumer(Consumer):  # type: ignore[misc]
    def _dead_letter(self, message: Message, reason: str, error: BaseException | None) -> None:
        rt = getattr(self.app, "checkout_runtime", None)
        routing_key = str((message.delivery_info or {}).get("routing_key") or "")
        service = routing_key.split(".", 1)[0]
        if service not in SERVICES:
            consumed = [q.name for q in self.app.amqp.queues.consume_from.values()]
            service = next((q for q in consumed if q in SERVICES), "order")
        headers = message.headers or {}
        if rt is not None:
            try:
                rt.dead_letters.record(
                    service,
                    message_key=message_key(message),
                    queue=service,
                    task=headers.get("task"),
                    order_id=None,
                    reason=reason,
                    error=repr(error) if error is not None else reason,
                    traceback="",
                    attempts=1,
                    message=raw_message(message),
                    merge="id" in headers,  # identical bodies without an id are separate messages
                )
            except Exception:  # the message still goes to the broker's DLQ (RabbitMQ)
                log.exception("could not record a malformed message of queue %s", service)
        log.warning("dead-lettered a malformed message on %s: %s", service, reason)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"undecodable message: {exc}", exc)
        message.reject(requeue=False)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._dead_letter(message, "not a task message", None)
        message.reject(requeue=False)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        self._dead_letter(message, f"unknown task {name!r}", exc)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"invalid task message: {exc}", exc)
        super().on_invalid_task(body, message, exc)
