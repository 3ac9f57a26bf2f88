"""The checkout saga, as data.

One declarative definition: phases of steps, each step paired with the compensation that
undoes it. A phase of more than one step runs in parallel. The Celery canvas
(``app/messaging/canvas.py``) and the auditor's expectations are derived from it; nothing else
spells out the order of the steps.

Rules every step and compensation follows (and the services implement):

* idempotent by (order, step): a repeat returns the recorded outcome, with no second effect;
* compensating a step that never ran is a no-op, and records that the step must not run
  any more — so "compensate everything up to the failed step" is always safe, even when
  the step's message is still in flight;
* compensations run newest first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compensation:
    name: str  # what it undoes, by grammar: release_inventory, refund_payment
    task: str  # "<service>.<verb>"


@dataclass(frozen=True)
class Step:
    name: str
    task: str
    compensation: Compensation | None = None

    @property
    def service(self) -> str:
        return self.task.split(".", 1)[0]


@dataclass(frozen=True)
class Saga:
    name: str
    phases: tuple[tuple[Step, ...], ...]
    compensate_task: str  # receives CompensateOrder when any step fails
    cancel_task: str  # runs after the last compensation

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"saga {self.name}: step names repeat: {names}")
        if not self.phases or len(self.phases[-1]) != 1:
            raise ValueError(f"saga {self.name}: the last phase must be a single step")
        for index, phase in enumerate(self.phases):
            if not phase:
                raise ValueError(f"saga {self.name}: empty phase")
            if len(phase) > 1 and len(self.phases[index + 1]) != 1:
                # the step after a parallel phase is its join (the chord's body)
                raise ValueError(f"saga {self.name}: a parallel phase must be followed by a single step")

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(step for phase in self.phases for step in phase)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"saga {self.name} has no step {name!r}")

    def phase_index(self, step_name: str) -> int:
        for index, phase in enumerate(self.phases):
            if any(step.name == step_name for step in phase):
                return index
        raise KeyError(f"saga {self.name} has no step {step_name!r}")

    def compensations_through(self, failed_step: str) -> tuple[Compensation, ...]:
        """Compensations of every step up to and including ``failed_step``, newest first.

        A failure anywhere in a parallel phase compensates every branch of that phase.
        """
        last = self.phase_index(failed_step)
        undo: list[Compensation] = []
        for phase in reversed(self.phases[: last + 1]):
            for step in reversed(phase):
                if step.compensation is not None:
                    undo.append(step.compensation)
        return tuple(undo)


CHECKOUT = Saga(
    name="checkout",
    phases=(
        (
            Step("reserve_inventory", "inventory.reserve", Compensation("release_inventory", "inventory.release")),
            Step("authorize_payment", "payment.authorize", Compensation("void_payment", "payment.void")),
        ),
        (Step("schedule_shipping", "shipping.schedule", Compensation("cancel_shipment", "shipping.cancel")),),
        (Step("capture_payment", "payment.capture", Compensation("refund_payment", "payment.refund")),),
        (Step("complete_order", "order.complete"),),
    ),
    compensate_task="order.compensate",
    cancel_task="order.cancel",
)
