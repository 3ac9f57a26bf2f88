"""The saga's own tasks, registered from its definition (``app/domain/saga.py``): each
step's, each compensation's and each step's choreography reaction — nothing here names a
step. A task ``"<service>.<verb>"`` runs the service's method ``<verb>``; a step's
service gives it up once its retries run out (``give_up``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from app.domain.saga import Compensation, Saga, Step
from app.messaging.tasks.kit import GivesUp, TaskKit


def method(service: object, task: str) -> Callable[..., Any]:
    """The service method that runs ``task``: a saga naming one its service lacks is refused
    as its tasks are registered, not when a message comes."""
    verb = task.split(".", 1)[1]
    found: object = getattr(service, verb, None)
    if not callable(found):
        raise TypeError(f"task {task}: {type(service).__name__} has no method {verb}()")
    return found


def register_saga(kit: TaskKit, sagas: Iterable[Saga], services: Mapping[str, GivesUp]) -> None:
    """The tasks of every step of ``sagas`` (the current definition first, then each older
    one still supported: an order started under one runs its steps), each task once."""
    steps: dict[str, Step] = {}
    for saga in sagas:
        for step in saga.steps:
            steps.setdefault(step.task, step)
    for step in steps.values():
        service = services[step.service]
        run = method(service, step.task)
        kit.define(step.task, kit.forward(step.name, step.command, run, service))
        if step.reaction is not None:  # choreography: the same step, run on an event
            decide = method(service, step.reaction)
            # (no canvas waits for its result: none is kept)
            kit.define(step.reaction, kit.reaction(step.name, decide, run, service), ignore_result=True)
        if step.compensation is not None:
            _compensation(kit, step.compensation, services[step.compensation.service])


def _compensation(kit: TaskKit, comp: Compensation, service: object) -> None:
    method(service, comp.task)
    verb = comp.task.split(".", 1)[1]

    def undo(cmd: Any, message_id: str) -> Any:
        # looked up per message, so that a service can be swapped or patched
        return getattr(service, verb)(cmd, message_id)

    kit.define(comp.task, kit.persistent(comp.command, undo, step=comp.name))
