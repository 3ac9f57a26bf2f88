"""The Celery tasks: thin adapters between messages and the services.

Task names are ``<service>.<verb>``; ``config.celery.task_routes`` sends each to its
service's queue. Each task takes exactly one positional argument (a command or an event
envelope), validates it, calls the service, and maps the outcome to Celery the one way
:mod:`.kit` defines (retries, dead letters, a saga parked for an operator).

* :mod:`.steps` — every saga step, compensation and choreography reaction, registered by
  looping over the saga definition;
* :mod:`.order`, :mod:`.inventory`, :mod:`.payment`, :mod:`.shipping` — each service's
  other tasks (its events' consumers, the orchestrator's moves);
* :mod:`.extensions` — the extensions' consumers.

The tasks get what they use as arguments (:class:`Collaborators`), built by the
composition root (``app/bootstrap.py``); nothing here looks anything up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from celery import Celery
from pydantic import BaseModel, Field

from app.domain.commands import CancelOrder, CompensateOrder, ParkOrder
from app.domain.events import Envelope
from app.domain.saga import Saga
from app.domain.subscriptions import SUBSCRIPTIONS, choreography_table
from app.extensions import Extension
from app.messaging.publisher import CeleryPublisher
from app.messaging.tasks import extensions, inventory, order, payment, shipping
from app.messaging.tasks.kit import (
    BROKER_HEADERS,
    FIRST_ATTEMPT,
    FIRST_FAILURE,
    PERSISTENT_RETRY_FACTOR,
    TRANSIENT,
    GivesUp,
    TaskKit,
    _headers,
    backoff,
)
from app.messaging.tasks.steps import register_saga
from app.persistence.db import Database
from app.persistence.deadletters import DeadLetterStore
from app.services.inventory import InventoryService
from app.services.order import Coordinator, OrderService
from app.services.payment import PaymentService
from app.services.shipping import ShippingService
from config.settings import SERVICES, Settings

__all__ = [
    "BROKER_HEADERS",
    "FIRST_ATTEMPT",
    "FIRST_FAILURE",
    "PERSISTENT_RETRY_FACTOR",
    "TRANSIENT",
    "CeleryPublisher",
    "Collaborators",
    "_headers",
    "backoff",
    "register_tasks",
    "task_bodies",
]


@dataclass(frozen=True)
class Collaborators:
    """Everything the tasks of one Celery app call."""

    settings: Settings
    saga: Saga
    order: OrderService
    inventory: InventoryService
    payment: PaymentService
    shipping: ShippingService
    coordinator: Coordinator  # the order's orchestrator, dispatching on this app
    dead_letters: DeadLetterStore
    databases: Mapping[str, Database]  # the services' and the extensions'
    extensions: Mapping[str, Extension]
    publish: Callable[[str, list[Envelope]], None]  # the relay's: send committed events again
    sweep: Callable[[], object]  # one round of the saga sweeper; its report

    @property
    def services(self) -> dict[str, GivesUp]:
        return {"order": self.order, "inventory": self.inventory, "payment": self.payment, "shipping": self.shipping}


class Republish(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)


def register_tasks(app: Celery, deps: Collaborators) -> None:
    """Define every task of the system on ``app``, bound to ``deps``."""
    kit = TaskKit(app, deps.settings, deps.dead_letters, deps.saga)
    register_saga(kit, (deps.saga, *deps.order.definitions.by_version.values()), deps.services)
    order.register(kit, deps.order, deps.coordinator, deps.sweep)
    inventory.register(kit, deps.inventory)
    payment.register(kit, deps.payment)
    shipping.register(kit, deps.shipping)
    extensions.register(kit, deps.extensions.values(), deps.databases)
    for service in SERVICES:
        kit.define(f"{service}.republish", kit.persistent(Republish, _republisher(deps, service)), ignore_result=True)


def task_bodies(saga: Saga) -> dict[str, type[BaseModel]]:
    """The model each service task's one argument fits — its message body's contract — by
    task name, for the tasks :func:`register_tasks` defines from ``saga`` (every step's,
    compensation's and reaction's), the subscription tables (event consumers take an
    envelope) and the order's own moves. ``tests/unit/test_contracts.py`` checks that it
    names what the registered tasks parse."""
    bodies: dict[str, type[BaseModel]] = {}
    for step in saga.steps:
        bodies[step.task] = step.command
        if step.reaction is not None:
            bodies[step.reaction] = Envelope
        if step.compensation is not None:
            bodies[step.compensation.task] = step.compensation.command
    for table in (SUBSCRIPTIONS, choreography_table(saga)):
        for consumers in table.values():
            bodies.update(dict.fromkeys(consumers, Envelope))
    bodies[saga.compensate_task] = CompensateOrder
    bodies[saga.cancel_task] = CancelOrder
    bodies["order.park"] = ParkOrder
    bodies.update({f"{service}.republish": Republish for service in SERVICES})
    return dict(sorted(bodies.items()))


def _republisher(deps: Collaborators, service: str) -> Callable[[Republish, str], int]:
    def send_again(cmd: Republish, _message_id: str) -> int:
        events = deps.databases[service].log(cmd.order_id)
        deps.publish(service, events)
        return len(events)

    return send_again
