"""The worker's message consumer without a broker: hand it messages, see what it did.

:class:`ConsumerProbe` builds the real :class:`app.messaging.consumer.CheckoutConsumer` of a
Celery app (the class its ``worker_consumer`` names, as a worker does, with its task
strategies) with stand-ins for the worker around it, and takes the handler Celery calls for
every delivered message. :meth:`ConsumerProbe.deliver` gives it a kombu message and reports
what became of it: handed on to the pool (a task request), rejected, acknowledged, and the
dead letter recorded for it (if any).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from celery.utils.timer2 import Timer
from celery.worker import state as worker_state
from kombu.message import Message
from kombu.serialization import prepare_accept_content

from app.bootstrap import Runtime
from app.messaging.consumer import CheckoutConsumer, message_key
from app.persistence.db import utcnow
from app.persistence.deadletters import DeadLetter, storable_text


class FakeChannel:
    """Records what the consumer did with each delivery tag."""

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.rejected: list[tuple[Any, bool]] = []

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self.acked.append(delivery_tag)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self.rejected.append((delivery_tag, requeue))


@dataclass
class Outcome:
    handed_on: int  # task requests passed to the pool
    acked: bool
    rejected: bool
    requeued: bool
    dead_letter: DeadLetter | None  # recorded (or updated) for this delivery


class _Controller:
    use_eventloop = False
    semaphore = None

    class state:  # noqa: N801  (Celery's name)
        revoked: set[str] = set()


class ConsumerProbe:
    def __init__(self, rt: Runtime, service: str = "payment") -> None:
        self.rt = rt
        self.service = service
        self.requests: list[Any] = []
        app = rt.celery
        app.finalize()
        pool = SimpleNamespace(apply_async=None, is_green=False)
        consumer_class: type[CheckoutConsumer] = app.conf.worker_consumer
        self.consumer = consumer_class(
            self.requests.append,
            app=app,
            timer=Timer(),
            hostname=f"{service}@probe",
            pool=pool,
            controller=_Controller(),
            hub=None,
        )
        self.consumer.update_strategies()
        self.handle: Callable[[Message], None] = self.consumer.create_task_handler()
        self.accept = prepare_accept_content(app.conf.accept_content)

    def letter_for(self, message: Message, since: datetime) -> DeadLetter | None:
        key = storable_text(message_key(message))[:255]  # as the store keeps it
        found = [d for d in self.rt.dead_letters.find(status=None) if d.message_key == key]
        return next((d for d in reversed(found) if d.last_failed_at >= since), None)

    def deliver(
        self,
        body: bytes,
        headers: Any = None,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf-8",
        properties: dict[str, Any] | None = None,
        delivery_info: Any = None,
    ) -> Outcome:
        """Deliver one message as kombu's Consumer does: a body it could not decompress goes
        to the consumer's ``on_decode_error``, anything else to the task handler."""
        channel = FakeChannel()
        tag = str(uuid.uuid4())
        message = Message(
            body=body,
            channel=channel,
            delivery_tag=tag,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            properties=properties,
            delivery_info={"routing_key": f"{self.service}.task"} if delivery_info is None else delivery_info,
        )
        message.accept = self.accept  # as kombu's Consumer sets it on each delivery
        before, since = len(self.requests), utcnow()
        try:
            if message.errors:
                message._reraise_error(self.consumer.on_decode_error)
            else:
                self.handle(message)
        finally:
            # what was handed on is done with: Celery's worker state is process-wide, and an
            # embedded system in this process would wait for these requests for ever
            for request in self.requests[before:]:
                worker_state.task_ready(request)
        return Outcome(
            handed_on=len(self.requests) - before,
            acked=tag in channel.acked,
            rejected=any(t == tag for t, _ in channel.rejected),
            requeued=any(t == tag and requeue for t, requeue in channel.rejected),
            dead_letter=self.letter_for(message, since),
        )
