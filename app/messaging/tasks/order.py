"""The order service's own tasks (``order.*``): the orchestrator's moves, the saga's memory
and the sweeper. The saga's step ``order.complete`` and its reaction are registered from the
definition (:mod:`.steps`); each service's ``republish`` by
:func:`app.messaging.tasks.register_tasks`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task

from app.domain.commands import CancelOrder, CompensateOrder, ParkOrder
from app.domain.events import Envelope
from app.messaging.tasks.kit import UNREACHABLE, TaskKit
from app.services.order import Coordinator, OrderService

log = logging.getLogger("checkout.sweeper")


def register(kit: TaskKit, orders: OrderService, coordinator: Coordinator, sweep: Callable[[], object]) -> None:
    def start(env: Envelope, _message_id: str) -> None:
        coordinator.start(env.key)

    def compensate(cmd: CompensateOrder, _message_id: str) -> None:
        coordinator.compensate(cmd)

    def record(env: Envelope, _message_id: str) -> bool:
        return coordinator.record(env)

    def swept(_task: Task) -> str:
        try:
            return str(sweep())
        except UNREACHABLE as exc:  # a dead letter of a sweep would be redriven for nothing
            log.warning("sweep stopped, %s: %s; the next round starts over", type(exc).__name__, exc)
            return f"stopped: {type(exc).__name__}"

    kit.define("order.sweep", swept, ignore_result=True)
    kit.define("order.start", kit.persistent(Envelope, start), ignore_result=True)
    kit.define(
        "order.compensate", kit.persistent(CompensateOrder, compensate, step="compensate_order"), ignore_result=True
    )
    kit.define(
        "order.cancel", kit.persistent(CancelOrder, orders.compensations_done, step="cancel_order"), ignore_result=True
    )
    kit.define("order.record", kit.persistent(Envelope, record), ignore_result=True)
    kit.define("order.park", kit.persistent(ParkOrder, lambda cmd, _id: orders.park(cmd)), ignore_result=True)
