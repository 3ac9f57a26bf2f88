"""Operating the dead letters: list, show, redrive, purge — the same on both brokers.

The store (:mod:`app.persistence.deadletters`) holds every dead letter with its message. Redrive
sends the message again with its retry count reset: a task message through Celery (with
its canvas options, so a chain resumes where it stopped), a malformed one as it came. On
RabbitMQ the broker's copy in ``<queue>.dlq`` is taken out at the same time, and purge
empties those queues too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.messaging.consumer import DEATH_HEADERS, broker_death, message_key, raw_message, task_order_id
from app.messaging.publisher import publish_raw
from app.messaging.tasks import FIRST_FAILURE
from app.persistence.deadletters import DEAD, PURGED, REDRIVEN, DeadLetter
from config.celery import dead_letter_queue_name, dead_letter_queues

if TYPE_CHECKING:
    from app.operations.system import System

RESOLVED = "RESOLVED"

#: Messages of one ``<queue>.dlq`` looked at per intake (each sweep round): the intake's
#: work stays the same however many letters wait there.
INTAKE_BATCH = 100

#: The cancellation reason of an order an operator compensated from the dead letters.
OPERATOR_REASON = "operator_compensated"


@dataclass(frozen=True)
class Redriven:
    letter: DeadLetter
    removed_from_broker: bool


def unsendable(letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be sent again whatever its status, or None if it can."""
    if letter.message.get("truncated"):
        return (
            f"dead letter {letter.id} kept only the first bytes of a {letter.message.get('size')}-byte message "
            "(over CHECKOUT_MAX_MESSAGE_BYTES); it cannot be sent again: purge it"
        )
    return None


class DeadLetterOps:
    def __init__(self, rt: System) -> None:
        self.rt = rt
        self.store = rt.dead_letters

    def letters(self, *, include_done: bool = False, order_id: str | None = None) -> list[DeadLetter]:
        return self.store.find(status=None if include_done else DEAD, order_id=order_id)

    def show(self, letter_id: str) -> DeadLetter:
        return self.store.get(letter_id)

    def redrive(self, letter_id: str) -> Redriven:
        """Send one dead letter again, retries reset."""
        letter = self.store.get(letter_id)
        problem = unsendable(letter)
        if problem is not None:
            raise ValueError(problem)
        # Mark it first: if the message dies again at once, that is a new dead letter,
        # not an update of this one.
        if not self.store.set_status(letter, REDRIVEN, only_if=DEAD):
            status = self.store.get(letter.id).status
            raise ValueError(f"dead letter {letter.id} is {status}, not DEAD; nothing to redrive")
        removed = self._take_from_broker(letter)
        try:
            self._send(letter)
        except Exception:
            self.store.set_status(letter, DEAD)  # still dead: nothing was sent
            raise
        return Redriven(letter, removed)

    def redrive_order(self, order_id: str, *, compensate: bool = False) -> list[DeadLetter]:
        """Redrive every dead letter of an order — or, with ``compensate``, give up on them
        and compensate the saga instead (every step that may have run is undone)."""
        letters = self.store.find(status=DEAD, order_id=order_id)
        if compensate:
            # every compensation again, even those that ran before the one that gave up:
            # each is done at most once (:class:`app.domain.errors.OrderFinished` if over)
            self.rt.coordinator_for(self.rt.celery).compensate_now(order_id, OPERATOR_REASON)
            for letter in letters:
                self._take_from_broker(letter)
                self.store.set_status(letter, RESOLVED)
            return letters
        for letter in letters:
            self.redrive(letter.id)
        return letters

    def retry_order(self, order_id: str) -> list[DeadLetter]:
        """An operator retries a parked (NEEDS_ATTENTION) saga: resume it and redrive its
        dead letters — the compensation chain goes on from the step that gave up.
        :class:`app.domain.errors.NotParked` if the saga is not parked: nothing changes."""
        self.rt.order.resume(order_id)
        return self.redrive_order(order_id)

    def purge(self, letter_id: str | None = None) -> int:
        """Drop one dead letter, or all of them (and RabbitMQ's dead-letter queues)."""
        if letter_id is not None:
            letter = self.store.get(letter_id)
            self._take_from_broker(letter)
            self.store.set_status(letter, PURGED)
            return 1
        letters = self.store.find(status=DEAD)
        for letter in letters:
            self.store.set_status(letter, PURGED)
        if self.rt.settings.broker_kind == "amqp":
            with self.rt.celery.connection_for_write() as conn:
                for queue in self._dead_letter_queues():
                    queue(conn.default_channel).purge()
        return len(letters)

    def take_in(self, limit: int = INTAKE_BATCH) -> int:
        """RabbitMQ: keep in the store each message the broker dead-lettered on its own — a
        quorum queue's delivery limit, after the message's worker died on every delivery —
        which no process of ours saw die, so no dead letter was recorded. The message stays
        in ``<queue>.dlq`` as every dead letter's broker copy does; a message already kept
        is left alone. Looks at the first ``limit`` messages of each queue; returns how many
        letters it added."""
        if self.rt.settings.broker_kind != "amqp":
            return 0
        added = 0
        with self.rt.celery.connection_for_write() as conn:
            for queue in self._dead_letter_queues():
                service = queue.name.removesuffix(".dlq")
                if service not in self.store.databases:
                    continue
                known = self.store.keys(service)
                bound = queue(conn.default_channel)
                held: list[Any] = []
                try:
                    while len(held) < limit and (msg := bound.get(no_ack=False)) is not None:
                        held.append(msg)
                        added += self._take_in_one(service, msg, known)
                finally:
                    for msg in held:
                        msg.requeue()
        return added

    def broker_depths(self) -> dict[str, int]:
        """RabbitMQ: messages waiting in each ``<queue>.dlq`` (empty on other brokers)."""
        if self.rt.settings.broker_kind != "amqp":
            return {}
        depths = {}
        with self.rt.celery.connection_for_write() as conn:
            for queue in self._dead_letter_queues():
                _, count, _ = queue(conn.default_channel).queue_declare(passive=True)
                depths[queue.name] = count
        return depths

    # --- internals --------------------------------------------------------------------

    def _dead_letter_queues(self) -> list[Any]:
        """RabbitMQ's ``<queue>.dlq`` of every queue of the system (extensions' too)."""
        return dead_letter_queues(self.rt.settings.rabbitmq_queue_type, self.rt.settings.queues)

    def _take_in_one(self, service: str, msg: Any, known: set[str]) -> int:
        death = broker_death(msg)
        key = message_key(msg)
        # rejected: one of our processes dead-lettered it, and kept it then
        if death is None or death.reason == "rejected" or key in known:
            return 0
        message = raw_message(msg)
        message["headers"] = {k: v for k, v in message["headers"].items() if k not in DEATH_HEADERS}
        message["routing_key"] = death.routing_key
        task = message["headers"].get("task")
        reason = (
            f"delivery limit: handed out {self.rt.settings.rabbitmq_delivery_limit + 1} times and never "
            "acknowledged (its worker process died on it each time)"
            if death.reason == "delivery_limit"
            else f"dead-lettered by the broker: {death.reason}"
        )
        self.store.record(
            service,
            message_key=key,
            queue=death.queue or service,
            task=task if isinstance(task, str) else None,
            order_id=task_order_id(msg),
            reason=reason,
            error=f"RabbitMQ dead-lettered the message from queue {death.queue!r}: {death.reason}",
            traceback="",
            attempts=death.count,
            message=message,
        )
        known.add(key)
        return 1

    def _send(self, letter: DeadLetter) -> None:
        message = letter.message
        if message.get("kind") == "task":
            signature = dict(message["signature"])
            options = dict(signature.get("options") or {})
            headers = {k: v for k, v in (options.get("headers") or {}).items() if k != FIRST_FAILURE}
            options.update(retries=0, headers=headers)
            signature["options"] = options
            self.rt.celery.signature(signature).apply_async()
            return
        publish_raw(
            self.rt.celery,
            base64.b64decode(message["body"]),
            routing_key=message.get("routing_key") or f"{letter.queue}.task",
            headers=message.get("headers") or {},
            content_type=message.get("content_type"),
            content_encoding=message.get("content_encoding"),
        )

    def _take_from_broker(self, letter: DeadLetter) -> bool:
        """RabbitMQ: remove the letter's message from ``<queue>.dlq`` (others stay, in order)."""
        if self.rt.settings.broker_kind != "amqp":
            return False
        name = dead_letter_queue_name(letter.queue)
        queue = next(q for q in self._dead_letter_queues() if q.name == name)
        found = False
        held: list[Any] = []
        with self.rt.celery.connection_for_write() as conn:
            bound = queue(conn.default_channel)
            while (msg := bound.get(no_ack=False)) is not None:
                if message_key(msg) == letter.message_key:
                    msg.ack()
                    found = True
                    break
                held.append(msg)
            for msg in held:
                msg.requeue()
        return found
