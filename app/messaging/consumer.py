"""The worker's message consumer: malformed messages become dead letters, not losses.

Celery acknowledges (drops) a message it cannot decode, and rejects one that names no
known task or is not a task message — on Redis that deletes it. This consumer first
records each such message in the dead-letter store (with why), then rejects it without
requeueing: RabbitMQ routes it to ``<queue>.dlq``; the worker carries on with the next.

Before Celery reads a message, this consumer also refuses — the same way — one whose body
is larger than ``CHECKOUT_MAX_MESSAGE_BYTES`` (unread; only its first bytes are kept), one
whose kombu/AMQP properties are of the wrong type or declare a body encoding other than
UTF-8, and one whose task headers or body do not have the shape of a task message of
protocol 2 (Celery would raise on such a message inside its consumer instead of rejecting
it, or carry the bad value into the task's retry); the checks are in
:mod:`app.messaging.checks`. On Redis, a payload on a queue's list that is not a kombu
message envelope at all reaches it as one that says so (:mod:`app.messaging.redis_transport`)
and is dead-lettered with its raw bytes. A body kombu cannot decompress is dead-lettered with what its
``compression`` header named. With
signing on (``app/messaging/signing.py``) a message that is not signed, or whose signature does not
verify against the trusted certificates, is dead-lettered as forged or unsigned.

Celery builds the consumer itself (``worker_consumer``), so what it needs — the dead-letter
store, the queues it may keep letters for, the size limit, whether signing is on — comes
with its class: :func:`bind_consumer` makes the one the composition root configures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from celery.exceptions import SecurityError
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from vine import promise

from app.messaging.checks import (
    MAX_TASK_ID,
    compression_problem,
    delivery_of,
    headers_of,
    property_problem,
    shape_problem,
    unreadable_problem,
)
from app.persistence.deadletters import DeadLetterStore
from config.settings import SERVICES

log = logging.getLogger("checkout.consumer")


#: Of a message over the size limit, the bytes kept in its dead letter (enough to see what it is).
OVERSIZE_KEPT_BYTES = 4096

#: Reason prefix of a message refused by signature checking.
FORGED = "forged or unsigned message"


def body_bytes(message: Message) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode()


def raw_message(message: Message, keep: int | None = None) -> dict[str, Any]:
    """Everything needed to publish the message again, as JSON — or, with ``keep``, only the
    body's first ``keep`` bytes (marked ``truncated``: such a message cannot be sent again)."""
    body = body_bytes(message)
    properties = message.properties if isinstance(message.properties, dict) else {}
    if unreadable_problem(message) is not None:
        # the payload itself, not the envelope the Redis transport carried it in (sent again,
        # it goes to the queue's own route)
        return {
            "kind": "raw",
            "body": base64.b64encode(body if keep is None else body[:keep]).decode(),
            "content_type": None,
            "content_encoding": None,
            "headers": {},
            "properties": {},
            "routing_key": None,
            **(_truncated(body) if keep is not None and len(body) > keep else {}),
        }
    raw = {
        "kind": "raw",
        "body": base64.b64encode(body if keep is None else body[:keep]).decode(),
        "content_type": _jsonable(message.content_type),
        "content_encoding": _jsonable(message.content_encoding),
        "headers": _jsonable(headers_of(message)),
        "properties": _jsonable({k: v for k, v in properties.items() if k != "delivery_info"}),
        "routing_key": _jsonable(delivery_of(message).get("routing_key")),
    }
    if keep is not None and len(body) > keep:
        raw |= _truncated(body)
    return raw


def _truncated(body: bytes) -> dict[str, Any]:
    return {"truncated": True, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


#: Headers RabbitMQ adds when it dead-letters a message: not part of the message sent again.
DEATH_HEADERS = (
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
)


@dataclass(frozen=True)
class BrokerDeath:
    """Why and from where RabbitMQ dead-lettered a message (its first ``x-death`` entry)."""

    reason: str  # rejected, delivery_limit, expired, maxlen
    queue: str
    routing_key: str | None
    count: int


def broker_death(message: Message) -> BrokerDeath | None:
    """What the broker wrote on a message it dead-lettered; None for one it did not."""
    deaths = headers_of(message).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    first = deaths[0]
    keys = first.get("routing-keys")
    key = keys[0] if isinstance(keys, list) and keys and isinstance(keys[0], str) else None
    count = first.get("count")
    return BrokerDeath(
        str(first.get("reason") or "unknown"),
        str(first.get("queue") or ""),
        key,
        count if isinstance(count, int) and not isinstance(count, bool) else 1,
    )


def task_order_id(message: Message) -> str | None:
    """The order a task message is about: its first argument's ``order_id``, when it has one."""
    try:
        decoded = json.loads(body_bytes(message))
    except ValueError:
        return None
    if isinstance(decoded, list) and decoded and isinstance(decoded[0], list) and decoded[0]:
        first = decoded[0][0]
        if isinstance(first, dict) and isinstance(first.get("order_id"), str):
            return str(first["order_id"])
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return f"<int of {value.bit_length()} bits>"  # no JSON column takes it (nor can it be printed)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def message_key(message: Message) -> str:
    task_id = headers_of(message).get("id")
    if isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_ID:
        return task_id
    return "sha256:" + hashlib.sha256(body_bytes(message)).hexdigest()


def security_failure(exc: BaseException, signing: bool) -> str | None:
    """The reason to give when ``exc`` means the message failed signature checking."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SecurityError):
            return f"{FORGED}: {current}"
        if signing and isinstance(current, ContentDisallowed):
            return f"{FORGED}: not signed ({current})"
        todo.extend([*current.args, current.__cause__, current.__context__])
    return None


@dataclass(frozen=True)
class ConsumerContext:
    """What the consumer needs besides Celery's own arguments."""

    dead_letters: DeadLetterStore | None  # None: refuse malformed messages, keep nothing
    services: tuple[str, ...]  # the queues whose dead letters can be kept (the services', extensions')
    max_message_bytes: int | None  # None: no size limit
    signing: bool  # signatures are checked: a message that fails is forged or unsigned


#: The consumer as configured by name (``config.celery``), outside a composed system.
UNBOUND = ConsumerContext(dead_letters=None, services=SERVICES, max_message_bytes=None, signing=False)


#: Celery's consumer steps this consumer runs its own of instead.
REPLACED_STEPS = {
    "celery.worker.consumer.delayed_delivery:DelayedDelivery": "app.messaging.delayed_delivery:DelayedDeliveryOnce",
    "celery.worker.consumer.heart:Heart": "app.messaging.heartbeat:Heart",
}


class CheckoutConsumer(Consumer):  # type: ignore[misc]
    context: ClassVar[ConsumerContext] = UNBOUND

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        """Celery's consumer steps, with delayed delivery set up on one node of a cluster
        (app/messaging/delayed_delivery.py) and the heartbeat events sent off the event loop
        (app/messaging/heartbeat.py)."""

        default_steps = [REPLACED_STEPS.get(step, step) for step in Consumer.Blueprint.default_steps]

    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], None]:
        """Celery's handler of each delivered message, behind the size, property and shape
        checks."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Message) -> None:
            if self._refused(message):
                return
            try:
                handle(message)
            except (*self.connection_errors, *self.channel_errors):
                raise  # the broker went away: Celery reconnects, the message comes back
            except Exception as exc:  # anything else is the message's fault; never the worker's end
                log.exception("could not handle a message")
                if not message.acknowledged:
                    self._dead_letter(message, f"unreadable task message: {exc!r}", exc)
                    message.reject(requeue=False)

        return on_task_received

    def _refused(self, message: Message) -> bool:
        """Dead-letter and reject the message if it stands for a payload that was not a kombu
        message (Redis), is too large, or its properties or task headers are of the wrong
        type or shape; True if it was."""
        limit = self.context.max_message_bytes
        size = len(body_bytes(message))
        unreadable = unreadable_problem(message)
        if unreadable is not None:  # not a kombu message at all (Redis): keep its raw bytes
            keep = OVERSIZE_KEPT_BYTES if limit is not None and size > limit else None
            self._dead_letter(message, f"invalid message: {unreadable}", None, keep=keep)
            message.reject(requeue=False)
            return True
        if limit is not None and size > limit:
            reason = f"message too large: {size} bytes, over CHECKOUT_MAX_MESSAGE_BYTES={limit}"
            self._dead_letter(message, reason, None, keep=OVERSIZE_KEPT_BYTES)
            message.reject(requeue=False)
            return True
        problem = property_problem(message)
        if problem is not None:
            reason = f"invalid message: {problem}"
        elif "task" in headers_of(message):
            try:
                problem = shape_problem(message, self.app.tasks)
            except Exception:  # undecodable, or refused: Celery's own path dead-letters it
                problem = None
            reason = f"invalid task message: {problem}"
        if problem is None:
            return False
        self._dead_letter(message, reason, None)
        message.reject(requeue=False)
        return True

    def _dead_letter(self, message: Message, reason: str, error: BaseException | None, keep: int | None = None) -> None:
        dead_letters, known = self.context.dead_letters, self.context.services
        routing_key = str(delivery_of(message).get("routing_key") or "")
        service = routing_key.split(".", 1)[0]
        if service not in known:
            consumed = [q.name for q in self.app.amqp.queues.consume_from.values()]
            service = next((q for q in consumed if q in known), "order")
        headers = headers_of(message)
        task = headers.get("task")
        key = message_key(message)
        if dead_letters is not None:
            try:
                dead_letters.record(
                    service,
                    message_key=key,
                    queue=service,
                    task=task[:128] if isinstance(task, str) else None,
                    order_id=None,
                    reason=reason,
                    error=repr(error) if error is not None else reason,
                    traceback="",
                    attempts=1,
                    message=raw_message(message, keep),
                    merge=not key.startswith("sha256:"),  # identical bodies without an id are separate messages
                )
            except Exception:  # the message still goes to the broker's DLQ (RabbitMQ)
                log.exception("could not record a malformed message of queue %s", service)
        log.warning("dead-lettered a malformed message on %s: %s", service, reason)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        problem = compression_problem(message, exc) if message.errors else None
        reason = security_failure(exc, self.context.signing) or f"undecodable message: {problem or exc}"
        self._dead_letter(message, reason, exc)
        message.reject(requeue=False)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._dead_letter(message, "not a task message", None)
        message.reject(requeue=False)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        self._dead_letter(message, f"unknown task {name!r}", exc)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        reason = security_failure(exc, self.context.signing) or f"invalid task message: {exc}"
        self._dead_letter(message, reason, exc)
        super().on_invalid_task(body, message, exc)


def bind_consumer(context: ConsumerContext) -> type[CheckoutConsumer]:
    """The consumer class of one composed system, for its Celery app's ``worker_consumer``."""
    return type(CheckoutConsumer.__name__, (CheckoutConsumer,), {"context": context})
