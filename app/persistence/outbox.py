"""The way out of a service: its outbox, published by the relay.

A service's transaction writes its events to its log (``<service>_events``). After the
commit, :meth:`Relay.publish` sends each event to every subscribed task and stamps it
published. :meth:`Relay.sweep` does the same, periodically, for any event that was
committed but not published (the process died between the two), so nothing is stranded.
Publishing twice is harmless: consumers are idempotent by event id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from app.domain.events import Envelope
from app.domain.subscriptions import CONSUMER_STEPS, consumers_of
from app.persistence.db import Database

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Sends one message to a task. Implemented over Celery in ``app/messaging/publisher.py``."""

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None: ...


class Relay:
    def __init__(
        self,
        databases: Mapping[str, Database],
        publisher: Publisher,
        consumers: Callable[[str], tuple[str, ...]] = consumers_of,
    ) -> None:
        self.databases = databases
        self.publisher = publisher
        self.consumers = consumers

    def publish(self, service: str, events: list[Envelope]) -> None:
        """Send committed events to their consumers; a failure leaves them for the sweep."""
        self.send(service, events)

    def send(self, service: str, events: list[Envelope]) -> int:
        """:meth:`publish`, saying how many of the events were sent (the rest stay unpublished)."""
        sent: list[str] = []
        try:
            for env in events:
                body = env.to_wire()
                for task in self.consumers(env.event_type):
                    self.publisher.send(
                        task, body, message_id=f"{env.event_id}:{task}", correlation_id=env.correlation_id
                    )
                sent.append(env.event_id)
        except Exception:  # the broker is unreachable: the sweep will send them
            log.warning("could not publish %d event(s) of %s now; the outbox sweep will", len(events), service)
        finally:
            try:
                self.databases[service].mark_published(sent)
            except Exception:  # harmless: they will be sent again and absorbed
                log.warning("could not mark %d event(s) of %s published", len(sent), service, exc_info=True)
        return len(sent)

    def missing(self, order_id: str, skip: frozenset[str] = frozenset()) -> list[tuple[Envelope, str]]:
        """The deliveries of the order's events that show no sign of having arrived:
        ``(event, consumer)`` for each consumer (but those in ``skip``) whose inbox does not
        hold the event and, for a consumer that runs a saga step (``CONSUMER_STEPS``), whose
        service has recorded neither that step nor its compensation for the order. Only these
        are worth sending again."""
        pending: list[tuple[Envelope, str]] = []
        for service in self.databases:
            for env in self.databases[service].log(order_id):
                pending += [(env, task) for task in self.consumers(env.event_type) if task not in skip]
        missing: list[tuple[Envelope, str]] = []
        steps: dict[str, set[str]] = {}
        by_consumer: dict[str, list[Envelope]] = {}
        for env, task in pending:
            by_consumer.setdefault(task, []).append(env)
        for task, events in by_consumer.items():
            db = self.databases.get(task.split(".", 1)[0])
            if db is None:  # a consumer this process has no database for: cannot tell, send
                missing += [(env, task) for env in events]
                continue
            shows = CONSUMER_STEPS.get(task)
            if shows is not None:
                if db.service not in steps:
                    steps[db.service] = db.recorded_steps(order_id)
                if not steps[db.service].intersection(shows):
                    missing += [(env, task) for env in events]
                continue
            handled = db.handled(task, [env.event_id for env in events])
            missing += [(env, task) for env in events if env.event_id not in handled]
        return missing

    def redeliver(self, order_id: str, skip: frozenset[str] = frozenset()) -> int:
        """Send the order's missing deliveries (:meth:`missing`) again, each with its
        original message id; how many were sent."""
        missing = self.missing(order_id, skip)
        for env, task in missing:
            self.publisher.send(
                task, env.to_wire(), message_id=f"{env.event_id}:{task}", correlation_id=env.correlation_id
            )
        return len(missing)

    def trace_context(self, order_id: str) -> str | None:
        """The ``traceparent`` of the order's latest event that carries one (any service's):
        where what is sent to re-drive the order joins its trace. None when untraced."""
        latest: Envelope | None = None
        for db in self.databases.values():
            for env in db.log(order_id):
                if env.traceparent is not None and (latest is None or env.occurred_at >= latest.occurred_at):
                    latest = env
        return latest.traceparent if latest is not None else None

    def sweep(self, service: str, older_than_seconds: float) -> int:
        """Publish the service's committed-but-unpublished events. Returns how many."""
        pending = self.databases[service].unpublished(older_than_seconds)
        if pending:
            log.info("outbox sweep: publishing %d stranded event(s) of %s", len(pending), service)
            self.publish(service, pending)
        return len(pending)


class Every(threading.Thread):
    """Calls ``work()`` every ``interval`` seconds in a daemon thread until stopped; a
    failure is logged and the next round tries again."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.work = work
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.work()
            except Exception:  # keep going; the next round tries again
                log.warning("%s failed; trying again in %ss", self.name, self.interval, exc_info=True)

    def stop(self) -> None:
        self._stopping.set()


def outbox_sweeper(relay: Relay, services: tuple[str, ...], interval: float, grace: float) -> Every:
    """A thread that re-publishes the services' stranded events (see :meth:`Relay.sweep`)."""

    def sweep() -> None:
        for service in services:
            relay.sweep(service, grace)

    return Every("outbox-sweeper", interval, sweep)
