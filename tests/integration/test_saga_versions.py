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

import app.bootstrap
from app.api import validate_order
from app.bootstrap import Runtime
from app.domain.commands import Command
from app.domain.saga import CHECKOUT, DEFINITIONS, SAGA_VERSION, Compensation, Saga, SagaDefinitions, Step
from app.domain.states import OrderStatus
from app.domain.subscriptions import ORCHESTRATION
from app.embedded import EmbeddedWorkers
from app.persistence.db import StepRecord
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


def test_a_saga_follows_the_definition_it_started_under(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    purge_memory_broker()
    # placed under version 1: their sagas are still to run when version 2 becomes current
    v1 = Runtime(settings)
    try:
        v1.prepare()
        ok_v1, _ = v1.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
        declined_v1, _ = v1.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}], "tok_declined"))
        assert v1.order.view(ok_v1).saga_version == 1
        # what an operator asks before dropping a version: which orders still follow it
        assert ids(v1.order.find(status=OrderStatus.PENDING, saga_version=1)) == {ok_v1, declined_v1}
    finally:
        v1.close()

    monkeypatch.setattr(app.bootstrap, "ShippingService", NotifyingShipping)
    with running(settings, V2) as rt:
        ok_v2, _ = rt.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
        declined_v2, _ = rt.order.place(validate_order("c", [{"sku": "MUG-01", "qty": 1}], "tok_declined"))

        def finished() -> bool:
            return all(rt.order.view(o).terminal for o in (ok_v1, declined_v1, ok_v2, declined_v2))

        wait_until(finished, timeout=60, what="every order finished")
        assert rt.order.find(status=OrderStatus.PENDING, saga_version=1) == []
        assert ids(rt.order.find(saga_version=2)) == {ok_v2, declined_v2}
        views = {o: rt.order.view(o) for o in (ok_v1, declined_v1, ok_v2, declined_v2)}
        assert {o: v.saga_version for o, v in views.items()} == {ok_v1: 1, declined_v1: 1, ok_v2: 2, declined_v2: 2}
        assert views[ok_v1].status == views[ok_v2].status == OrderStatus.COMPLETED
        assert views[declined_v1].status == views[declined_v2].status == OrderStatus.CANCELLED

        # the forward path: version 1's order was not notified, version 2's was
        assert ok_v1 not in NOTICES.sent and ok_v2 in NOTICES.sent
        # the compensation: version 1's chain has no retraction, version 2's has
        assert declined_v1 not in NOTICES.retracted and declined_v2 in NOTICES.retracted
        assert declined_v1 not in NOTICES.sent and declined_v2 not in NOTICES.sent
