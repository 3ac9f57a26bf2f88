"""A change to the saga definition never changes the saga of an order already under way:
an order placed under version 1 finishes, or compensates, by version 1 after version 2
(one step more) becomes current, while a new order runs version 2's step.

Orchestration only: in choreography the other services react to events by the current
subscription table, which does not know an order's version (see docs/architecture.md,
"Changing the saga definition")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

import app.bootstrap
from app.api import validate_order
from app.bootstrap import Runtime
from app.domain.commands import Command
from app.domain.saga import CHECKOUT, DEFINITIONS, SAGA_VERSION, Compensation, Saga, SagaDefinitions, Step
from app.domain.states import OrderStatus
from app.domain.subscriptions import ORCHESTRATION
from app.embedded import EmbeddedWorkers
from app.persistence.db import StepRecord
from app.services.order import orders
from app.services.shipping import ShippingService
from config.settings import Settings
from tests.conftest import purge_memory_broker, wait_until

pytestmark = pytest.mark.timeout(120)


class Notices:
    """The orders the new step notified, and those whose notice was retracted."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.retracted: list[str] = []
        self.lock = threading.Lock()


NOTICES = Notices()


class NotifyingShipping(ShippingService):
    """The service methods version 2's step and its compensation need."""

    def notify(self, cmd: Command, causation_id: str | None = None) -> StepRecord:
        with NOTICES.lock:
            NOTICES.sent.append(cmd.order_id)
        return self.db.run(lambda uow: uow.record_step(cmd.order_id, "notify_customer", StepRecord("done")))

    def retract_notice(self, cmd: Command, causation_id: str | None = None) -> StepRecord:
        with NOTICES.lock:
            NOTICES.retracted.append(cmd.order_id)
        return self.db.run(lambda uow: uow.record_step(cmd.order_id, "retract_notice", StepRecord("noop")))


NOTIFY = Step(
    "notify_customer",
    "shipping.notify",
    Compensation("retract_notice", "shipping.retract_notice"),
)


def version_2() -> Saga:
    """The checkout with the customer notified once the shipment is booked, before the capture."""
    return replace(CHECKOUT, phases=(*CHECKOUT.phases[:2], (NOTIFY,), *CHECKOUT.phases[2:]))


V2 = SagaDefinitions(SAGA_VERSION + 1, {**DEFINITIONS.by_version, SAGA_VERSION + 1: version_2()})


@pytest.fixture
def saga_mode() -> str:
    return ORCHESTRATION


@contextmanager
def running(settings: Settings, definitions: SagaDefinitions) -> Iterator[Runtime]:
    """The embedded system (restarted) with these saga definitions."""
    rt = Runtime(settings, definitions=definitions)
    workers = EmbeddedWorkers(rt)
    workers.start()
    try:
        yield rt
    finally:
        workers.stop()
        rt.close()
        purge_memory_broker()


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {row["order_id"] for row in rows}


def run_up_to_the_shipment(rt: Runtime, order_id: str) -> None:
    """Run the order's saga by hand as far as its shipment, as its canvas would have, and
    leave it there (the rest of its canvas lost): only the sweeper moves it on."""
    rt.order.saga_dispatched(order_id)
    commands = rt.order.step_commands(order_id)
    services = {"inventory": rt.inventory, "payment": rt.payment, "shipping": rt.shipping}
    for phase in CHECKOUT.phases[:2]:
        for step in phase:
            run = getattr(services[step.service], step.task.split(".", 1)[1])
            assert run(step.command.model_validate(commands[step.name])).outcome == "done"


def test_a_saga_follows_the_definition_it_started_under(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings.model_copy(
        update={"saga_deadline_seconds": 1.0, "saga_give_up_seconds": 60, "sweep_interval_seconds": 0.3}
    )
    purge_memory_broker()
    # placed under version 1: one half way through its saga, two whose sagas are still to
    # start when version 2 becomes current
    v1 = Runtime(settings)
    try:
        v1.prepare()
        halfway_v1, _ = v1.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
        run_up_to_the_shipment(v1, halfway_v1)
        ok_v1, _ = v1.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
        declined_v1, _ = v1.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}], "tok_declined"))
        assert v1.order.view(ok_v1).saga_version == 1
        # what an operator asks before dropping a version: which orders still follow it
        pending_v1 = ids(v1.order.find(status=OrderStatus.PENDING, saga_version=1))
        assert pending_v1 == {halfway_v1, ok_v1, declined_v1}
    finally:
        v1.close()

    monkeypatch.setattr(app.bootstrap, "ShippingService", NotifyingShipping)
    with running(settings, V2) as rt:
        ok_v2, _ = rt.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
        declined_v2, _ = rt.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}], "tok_declined"))
        every = (halfway_v1, ok_v1, declined_v1, ok_v2, declined_v2)

        wait_until(lambda: all(rt.order.view(o).terminal for o in every), timeout=60, what="every order finished")
        assert rt.order.find(status=OrderStatus.PENDING, saga_version=1) == []
        assert ids(rt.order.find(saga_version=2)) == {ok_v2, declined_v2}
        views = {o: rt.order.view(o) for o in every}
        assert {o: v.saga_version for o, v in views.items()} == {
            halfway_v1: 1,
            ok_v1: 1,
            declined_v1: 1,
            ok_v2: 2,
            declined_v2: 2,
        }
        for order_id in (halfway_v1, ok_v1, ok_v2):
            assert views[order_id].status == OrderStatus.COMPLETED, order_id
        assert views[declined_v1].status == views[declined_v2].status == OrderStatus.CANCELLED
        assert views[halfway_v1].steps["capture_payment"] == "done"
        redrives = rt.order.db.query(
            lambda c: c.execute(select(orders.c.redrives).where(orders.c.order_id == halfway_v1)).scalar()
        )
        assert redrives >= 1  # resumed by the sweeper

        # the forward path: version 1's orders were not notified (the one the sweeper resumed
        # went on at the capture, version 1's next step), version 2's was
        assert not {halfway_v1, ok_v1} & set(NOTICES.sent) and ok_v2 in NOTICES.sent
        # the compensation: version 1's chain has no retraction, version 2's has
        assert declined_v1 not in NOTICES.retracted and declined_v2 in NOTICES.retracted
        assert declined_v1 not in NOTICES.sent and declined_v2 not in NOTICES.sent
