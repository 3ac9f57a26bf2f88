"""Adding a step is the saga definition plus its service method: a fake step added to a
copy of the checkout saga is registered as a task, routed to its service's queue, sent by
the canvas with the command the order builds for it, and drawn in the event graph."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from celery import Celery

from app.api import validate_order
from app.bootstrap import Runtime
from app.domain.commands import Command
from app.domain.saga import CHECKOUT, Compensation, Saga, Step
from app.domain.values import Line
from app.messaging.canvas import build_saga
from app.messaging.tasks import register_tasks
from app.operations.eventgraph import Edge, edges, mermaid, problems
from app.persistence.db import StepRecord
from app.services.order import OrderService
from app.services.shipping import ShippingService
from config.celery import celery_config
from config.settings import Settings


class WeighParcel(Command):
    lines: tuple[Line, ...]


class WeighingShipping(ShippingService):
    """The service method the new step needs (and its compensation's)."""

    def weigh(self, cmd: WeighParcel, causation_id: str | None = None) -> StepRecord:
        return self.db.run(lambda uow: uow.record_step(cmd.order_id, "weigh_parcel", StepRecord("done")))

    def unweigh(self, cmd: Command, causation_id: str | None = None) -> StepRecord:
        return self.db.run(lambda uow: uow.record_step(cmd.order_id, "unweigh_parcel", StepRecord("noop")))


WEIGH = Step(
    "weigh_parcel",
    "shipping.weigh",
    Compensation("unweigh_parcel", "shipping.unweigh", done_events=("ShipmentCancelled",)),
    WeighParcel,
    done_events=("ShipmentScheduled",),
    failed_events=("ShipmentFailed",),
)


def with_weighing() -> Saga:
    """The checkout with the parcel weighed once the shipment is booked, before the capture."""
    return replace(CHECKOUT, phases=(*CHECKOUT.phases[:2], (WEIGH,), *CHECKOUT.phases[2:]))


def test_a_step_added_to_a_copy_of_the_saga_is_registered_routed_sent_and_drawn(tmp_path: Path) -> None:
    saga = with_weighing()
    rt = Runtime(Settings(data_dir=tmp_path))
    try:
        rt.prepare()
        app = Celery("added-step", set_as_current=False)
        app.conf.update(celery_config(rt.settings))
        shipping = WeighingShipping(rt.databases["shipping"], rt.carrier)
        register_tasks(app, replace(rt.collaborators(app), saga=saga, shipping=shipping))

        # registered: its task and its compensation's, on the copy only
        assert {"shipping.weigh", "shipping.unweigh"} <= set(app.tasks)
        assert "shipping.weigh" not in rt.celery.tasks
        # routed: to its service's queue
        for task in ("shipping.weigh", "shipping.unweigh"):
            assert app.amqp.router.route({}, task)["queue"].name == "shipping"
        # it runs the service method
        body = {"order_id": "o-1", "lines": [{"sku": "MUG-01", "qty": 1}]}
        result = app.tasks["shipping.weigh"].apply(args=(body,))
        assert result.result == {"order_id": "o-1", "step": "weigh_parcel", "outcome": "done"}

        # sent: the order builds its command, the canvas sends it after the shipment is booked
        order = OrderService(rt.databases["order"], saga=saga)
        order_id, _ = order.place(validate_order("c", [{"sku": "MUG-01", "qty": 2}]))
        plan = order.plan_saga(order_id)
        assert plan is not None
        assert plan.commands["weigh_parcel"] == {"order_id": order_id, "lines": [{"sku": "MUG-01", "qty": 2}]}
        canvas = build_saga(app, saga, order_id, plan.commands)
        assert [sig.task for sig in canvas.tasks[1:]] == ["shipping.weigh", "payment.capture", "order.complete"]

        # drawn: started by the canvas, emitting its events, compensated on a failure
        graph = edges("orchestration", saga=saga)
        assert Edge("order.start", "shipping.weigh", "starts") in graph
        assert Edge("shipping.weigh", "ShipmentScheduled", "emits") in graph
        assert Edge("order.compensate", "shipping.unweigh", "starts") in graph
        assert Edge("shipping.unweigh", "ShipmentCancelled", "emits") in graph
        assert '["shipping.weigh"]' in mermaid("orchestration", saga=saga)
        assert '["shipping.weigh"]' not in mermaid("orchestration")
        assert problems("orchestration", saga=saga) == []
    finally:
        rt.close()


def test_a_step_whose_service_lacks_its_method_is_refused_at_registration(tmp_path: Path) -> None:
    rt = Runtime(Settings(data_dir=tmp_path))
    try:
        app = Celery("missing-method", set_as_current=False)
        app.conf.update(celery_config(rt.settings))
        with pytest.raises(TypeError, match=r"shipping\.weigh: ShippingService has no method weigh\(\)"):
            register_tasks(app, replace(rt.collaborators(app), saga=with_weighing()))
    finally:
        rt.close()


def test_the_choreography_wiring_is_derived_from_the_definition() -> None:
    """The checkout's own table, as it reads when written out: the derivation yields it."""
    from app.domain.subscriptions import CHOREOGRAPHY_SUBSCRIPTIONS, CONSUMER_STEPS

    follows = ("order.record",)
    undo = ("inventory.undo", "payment.undo", "shipping.undo")
    assert CHOREOGRAPHY_SUBSCRIPTIONS["OrderPlaced"] == (
        "inventory.reserve_on_placed",
        "payment.authorize_on_placed",
        "shipping.join",
    )
    assert CHOREOGRAPHY_SUBSCRIPTIONS["InventoryReserved"] == (*follows, "shipping.join")
    assert CHOREOGRAPHY_SUBSCRIPTIONS["PaymentAuthorized"] == (*follows, "shipping.join")
    assert CHOREOGRAPHY_SUBSCRIPTIONS["ShipmentScheduled"] == (*follows, "payment.capture_on_scheduled")
    assert CHOREOGRAPHY_SUBSCRIPTIONS["PaymentCaptured"] == (*follows, "order.complete_on_captured")
    for failure in ("InventoryReservationFailed", "PaymentDeclined", "PaymentFailed", "ShipmentFailed"):
        assert CHOREOGRAPHY_SUBSCRIPTIONS[failure] == (*follows, *undo), failure
    assert CHOREOGRAPHY_SUBSCRIPTIONS["OrderCompleted"] == ("inventory.commit",)
    assert CHOREOGRAPHY_SUBSCRIPTIONS["OrderCancelled"] == ("inventory.release_on_cancel", *undo)
    assert CONSUMER_STEPS["shipping.join"] == ("schedule_shipping", "cancel_shipment")
    assert CONSUMER_STEPS["payment.undo"] == ("void_payment",)


def test_a_step_added_with_a_reaction_is_subscribed_in_choreography() -> None:
    """In choreography the new step's reaction runs on the events of the phase before it, and
    the step after it on the new step's done events: no table is edited by hand."""
    from app.domain.subscriptions import choreography_table, consumer_steps

    saga = with_weighing()
    weigh = replace(saga.phases[2][0], done_events=("ParcelWeighed",), reaction="shipping.weigh_on_scheduled")
    saga = replace(saga, phases=(*saga.phases[:2], (weigh,), *saga.phases[3:]))
    table = choreography_table(saga)
    assert "shipping.weigh_on_scheduled" in table["ShipmentScheduled"]
    assert "payment.capture_on_scheduled" not in table["ShipmentScheduled"]
    assert table["ParcelWeighed"] == ("payment.capture_on_scheduled",)
    assert consumer_steps(saga)["shipping.weigh_on_scheduled"] == ("weigh_parcel", "unweigh_parcel")
