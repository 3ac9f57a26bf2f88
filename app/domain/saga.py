"""The checkout saga, as data.

One declarative definition: phases of steps, each step paired with the compensation that
undoes it. A phase of more than one step runs in parallel. Both execution styles are derived
from it — the Celery canvas (``app/messaging/canvas.py``) and the tasks that run each step
(``app/messaging/tasks/``) — and so are the auditor's expectations, the order's view of its
saga and the event graph; nothing else spells out the order of the steps or what each emits.

A step's task is named ``"<service>.<verb>"``: the service's method ``<verb>`` runs it (and
its ``give_up`` records it failed once its retries run out); a compensation's task likewise;
a step's choreography ``reaction`` names the service method that turns an event into the
step's command. Adding a step is this definition plus that service method.

Rules every step and compensation follows (and the services implement):

* idempotent by (order, step): a repeat returns the recorded outcome, with no second effect;
* compensating a step that never ran is a no-op, and records that the step must not run
  any more — so "compensate everything up to the failed step" is always safe, even when
  the step's message is still in flight;
* compensations run newest first.

The definition has a version (:data:`SAGA_VERSION`), and each order records the version it
started under: a resumed, re-driven or compensating saga follows that definition
(:meth:`SagaDefinitions.for_order`), never one that changed under it. Changing the
definition is a new version beside the old, which stays registered in :data:`DEFINITIONS`
until no order started under it is in flight (docs/architecture.md, "Changing the saga
definition").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from app.domain.commands import (
    AuthorizePayment,
    CancelShipment,
    CapturePayment,
    Command,
    CompleteOrder,
    RefundPayment,
    ReleaseInventory,
    ReserveInventory,
    ScheduleShipment,
    VoidPayment,
)
from app.domain.errors import UnknownSagaVersion
from app.domain.states import StepOutcome

#: What an event may say of a step (kept by these names for importers).
DONE, FAILED = StepOutcome.DONE, StepOutcome.FAILED


@dataclass(frozen=True)
class Compensation:
    name: str  # what it undoes, by grammar: release_inventory, refund_payment
    task: str  # "<service>.<verb>"
    command: type[Command] = Command  # its one argument (the order id, for every compensation)
    done_events: tuple[str, ...] = ()  # the events that say it is done

    @property
    def service(self) -> str:
        return self.task.split(".", 1)[0]


@dataclass(frozen=True)
class Step:
    name: str
    task: str
    compensation: Compensation | None = None
    #: its one argument; the order builds it from what it knows of the order (its id, lines,
    #: total, currency, payment token, address), each command taking the fields it declares
    command: type[Command] = Command
    done_events: tuple[str, ...] = ()  # the events that say it is done
    failed_events: tuple[str, ...] = ()  # ... and that it failed
    #: choreography: the task that runs the step on an event (``"<service>.<verb>"``, the verb
    #: naming the service method that decides from the event whether and how to run it)
    reaction: str | None = None

    @property
    def service(self) -> str:
        return self.task.split(".", 1)[0]

    @property
    def events(self) -> tuple[str, ...]:
        """Every event the step may emit, whoever starts it."""
        return self.done_events + self.failed_events


@dataclass(frozen=True)
class Saga:
    name: str
    phases: tuple[tuple[Step, ...], ...]
    compensate_task: str  # receives CompensateOrder when any step fails
    cancel_task: str  # runs after the last compensation
    #: steps after the saga has ended, run on the order's own events in both styles (no canvas
    #: sends them): they report in the order's view of its saga like any step
    epilogue: tuple[Step, ...] = ()

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

    @property
    def compensations(self) -> tuple[Compensation, ...]:
        """Every step's compensation, in the order they run (newest first)."""
        return self.compensations_through(self.steps[-1].name)

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

    @cached_property
    def step_events(self) -> dict[str, tuple[str, StepOutcome]]:
        """What an event says about a step: event type -> ``(step or compensation, outcome)``,
        for every event only one step reports. (An event several steps may emit names its
        step in its payload: see :meth:`steps_failing_with`.)"""
        reports: dict[str, list[tuple[str, StepOutcome]]] = {}
        for step in (*self.steps, *self.epilogue):
            for outcome, events in ((DONE, step.done_events), (FAILED, step.failed_events)):
                for event_type in events:
                    reports.setdefault(event_type, []).append((step.name, outcome))
            if step.compensation is not None:
                for event_type in step.compensation.done_events:
                    reports.setdefault(event_type, []).append((step.compensation.name, DONE))
        return {event_type: found[0] for event_type, found in reports.items() if len(found) == 1}

    def steps_failing_with(self, event_type: str) -> tuple[str, ...]:
        """The steps that report their failure with ``event_type``, first step first."""
        return tuple(step.name for step in self.steps if event_type in step.failed_events)


CHECKOUT = Saga(
    name="checkout",
    phases=(
        (
            Step(
                "reserve_inventory",
                "inventory.reserve",
                Compensation("release_inventory", "inventory.release", ReleaseInventory, ("InventoryReleased",)),
                ReserveInventory,
                ("InventoryReserved",),
                ("InventoryReservationFailed",),
                reaction="inventory.reserve_on_placed",
            ),
            Step(
                "authorize_payment",
                "payment.authorize",
                Compensation("void_payment", "payment.void", VoidPayment, ("PaymentVoided",)),
                AuthorizePayment,
                ("PaymentAuthorized",),
                ("PaymentDeclined", "PaymentFailed"),
                reaction="payment.authorize_on_placed",
            ),
        ),
        (
            Step(
                "schedule_shipping",
                "shipping.schedule",
                Compensation("cancel_shipment", "shipping.cancel", CancelShipment, ("ShipmentCancelled",)),
                ScheduleShipment,
                ("ShipmentScheduled",),
                ("ShipmentFailed",),
                reaction="shipping.join",
            ),
        ),
        (
            Step(
                "capture_payment",
                "payment.capture",
                Compensation("refund_payment", "payment.refund", RefundPayment, ("PaymentRefunded",)),
                CapturePayment,
                ("PaymentCaptured",),
                ("PaymentFailed",),
                reaction="payment.capture_on_scheduled",
            ),
        ),
        (
            Step(
                "complete_order",
                "order.complete",
                command=CompleteOrder,
                done_events=("OrderCompleted",),
                reaction="order.complete_on_captured",
            ),
        ),
    ),
    compensate_task="order.compensate",
    cancel_task="order.cancel",
    # after OrderCompleted the reserved stock becomes committed (shipped)
    epilogue=(Step("commit_inventory", "inventory.commit", done_events=("InventoryCommitted",)),),
)


#: The version of :data:`CHECKOUT`: bumped whenever its steps, their order or their
#: compensations change, so that an order follows the definition it started under.
SAGA_VERSION = 1


@dataclass(frozen=True)
class SagaDefinitions:
    """The saga definitions this code can run, by version: the current one, that new orders
    start under, and every older one still supported, that orders started under it follow."""

    current_version: int
    by_version: Mapping[int, Saga] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.current_version not in self.by_version:
            raise ValueError(f"saga definitions: no version {self.current_version} to make current")

    @classmethod
    def of(cls, saga: Saga, version: int = SAGA_VERSION) -> SagaDefinitions:
        """Only ``saga``, as ``version``."""
        return cls(version, {version: saga})

    @property
    def current(self) -> Saga:
        return self.by_version[self.current_version]

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self.by_version))

    def for_order(self, version: int | None) -> Saga:
        """The definition an order started under ``version`` follows (None: an order from
        before versions were recorded, which started under version 1)."""
        version = 1 if version is None else version
        try:
            return self.by_version[version]
        except KeyError:
            raise UnknownSagaVersion(
                f"saga {self.current.name}: no definition version {version} "
                f"(this code has {', '.join(map(str, self.versions))})"
            ) from None


#: The definitions this code runs: the checkout, at :data:`SAGA_VERSION`.
DEFINITIONS = SagaDefinitions.of(CHECKOUT)
