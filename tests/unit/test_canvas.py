"""The canvas built from the saga definition: shape, routing, error callbacks."""

from typing import Any

import pytest
from celery import Celery
from celery.canvas import _chain, _chord

from app.domain.saga import CHECKOUT
from app.messaging.canvas import build_compensation, build_saga, unlock_retries
from config.celery import celery_config, task_routes
from config.settings import Settings

ORDER = "o-1"
COMMANDS: dict[str, dict[str, Any]] = {step.name: {"order_id": ORDER, "step": step.name} for step in CHECKOUT.steps}


@pytest.fixture
def celery_app() -> Celery:
    app = Celery("canvas-test", set_as_current=False)
    app.conf.update(celery_config(Settings()))
    return app


def test_saga_is_chord_then_chain(celery_app: Celery) -> None:
    canvas = build_saga(celery_app, CHECKOUT, ORDER, COMMANDS)
    assert isinstance(canvas, _chain)
    chord_part, capture, complete = canvas.tasks
    assert isinstance(chord_part, _chord)
    assert sorted(t.task for t in chord_part.tasks) == ["inventory.reserve", "payment.authorize"]
    assert chord_part.body.task == "shipping.schedule"
    assert (capture.task, complete.task) == ("payment.capture", "order.complete")


def test_each_task_gets_only_its_command_immutably(celery_app: Celery) -> None:
    canvas = build_saga(celery_app, CHECKOUT, ORDER, COMMANDS)
    chord_part, capture, complete = canvas.tasks
    for sig, step in [
        (chord_part.tasks[0], "reserve_inventory"),
        (chord_part.tasks[1], "authorize_payment"),
        (chord_part.body, "schedule_shipping"),
        (capture, "capture_payment"),
        (complete, "complete_order"),
    ]:
        assert sig.immutable
        assert sig.args == (COMMANDS[step],)
        assert sig.options["task_id"] == f"{ORDER}.{step}"


def test_error_callbacks_name_the_failed_step_and_take_one_argument(celery_app: Celery) -> None:
    canvas = build_saga(celery_app, CHECKOUT, ORDER, COMMANDS)
    chord_part, capture, complete = canvas.tasks
    # chord header tasks carry none: the body's callback fires once, after both finished
    for header in chord_part.tasks:
        assert not header.options.get("link_error")
    for sig, step in [
        (chord_part.body, "schedule_shipping"),
        (capture, "capture_payment"),
        (complete, "complete_order"),
    ]:
        (errback,) = sig.options["link_error"]
        assert errback["task"] == "order.compensate"
        assert errback["immutable"]
        # one positional argument: Celery publishes it to the order queue instead of
        # running it inline inside the failing worker
        assert errback["args"] == ({"order_id": ORDER, "failed_step": step},) or errback["args"] == [
            {"order_id": ORDER, "failed_step": step}
        ]


def test_compensation_chain_runs_newest_first_then_cancels(celery_app: Celery) -> None:
    comps = CHECKOUT.compensations_through("capture_payment")
    canvas = build_compensation(celery_app, CHECKOUT, ORDER, comps, {"order_id": ORDER})
    assert [t.task for t in canvas.tasks] == [
        "payment.refund",
        "shipping.cancel",
        "payment.void",
        "inventory.release",
        "order.cancel",
    ]
    assert all(t.immutable for t in canvas.tasks)


def test_routes_send_each_task_to_its_service_queue(celery_app: Celery) -> None:
    router = celery_app.amqp.router
    for task in ["inventory.reserve", "payment.authorize", "shipping.schedule", "order.complete", "order.compensate"]:
        route = router.route({}, task)
        assert route["queue"].name == task.split(".")[0]
    assert set(task_routes()) == {"order.*", "inventory.*", "payment.*", "shipping.*"}


def test_wire_settings_are_json_only_and_at_least_once() -> None:
    conf = celery_config(Settings())
    assert conf["accept_content"] == ["json"] and conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1


def test_a_resumed_saga_starts_at_its_first_unfinished_step(celery_app: Celery) -> None:
    done = frozenset({"reserve_inventory", "authorize_payment"})
    canvas = build_saga(celery_app, CHECKOUT, ORDER, COMMANDS, done)
    assert [t.task for t in canvas.tasks] == ["shipping.schedule", "payment.capture", "order.complete"]
    partly = build_saga(celery_app, CHECKOUT, ORDER, COMMANDS, frozenset({"reserve_inventory"}))
    assert isinstance(partly.tasks[0], _chord)  # a phase with a step left runs whole again


def test_a_chords_unlock_polls_are_bounded_past_the_sweepers_give_up(
    celery_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the database result backend a chord is joined by ``celery.chord_unlock`` polling;
    the saga's chord hands it a retry limit, so a chord whose header message was lost (the
    sweeper compensated the saga instead) stops polling instead of polling for ever."""
    retries = unlock_retries(give_up_seconds=60, retry_interval=0.2)
    assert retries == 600  # 0.2 s apart at least: two minutes, twice the give-up time
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(celery_app.backend, "apply_chord", lambda header, body, **kwargs: seen.append(kwargs))
    build_saga(celery_app, CHECKOUT, ORDER, COMMANDS, chord_retries=retries).apply_async()
    assert [kwargs["max_retries"] for kwargs in seen] == [retries]
    seen.clear()
    build_saga(celery_app, CHECKOUT, ORDER, COMMANDS).apply_async()
    assert [kwargs["max_retries"] for kwargs in seen] == [None]  # Celery's default: no limit
