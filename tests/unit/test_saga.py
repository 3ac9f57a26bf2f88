"""The saga definition: order of compensations, and what it refuses."""

import pytest

from app.domain.errors import UnknownSagaVersion
from app.domain.saga import CHECKOUT, DEFINITIONS, SAGA_VERSION, Compensation, Saga, SagaDefinitions, Step


def names(comps: tuple[Compensation, ...]) -> list[str]:
    return [c.name for c in comps]


def test_checkout_steps_in_order() -> None:
    assert [s.name for s in CHECKOUT.steps] == [
        "reserve_inventory",
        "authorize_payment",
        "schedule_shipping",
        "capture_payment",
        "complete_order",
    ]
    assert [len(p) for p in CHECKOUT.phases] == [2, 1, 1, 1]


def test_every_task_is_named_service_dot_verb() -> None:
    for step in CHECKOUT.steps:
        service, verb = step.task.split(".")
        assert service in {"order", "inventory", "payment", "shipping"} and verb
        if step.compensation:
            assert step.compensation.task.split(".")[0] == service


@pytest.mark.parametrize(
    ("failed", "expected"),
    [
        # a failure in either parallel branch compensates both branches
        ("reserve_inventory", ["void_payment", "release_inventory"]),
        ("authorize_payment", ["void_payment", "release_inventory"]),
        ("schedule_shipping", ["cancel_shipment", "void_payment", "release_inventory"]),
        ("capture_payment", ["refund_payment", "cancel_shipment", "void_payment", "release_inventory"]),
        ("complete_order", ["refund_payment", "cancel_shipment", "void_payment", "release_inventory"]),
    ],
)
def test_compensations_through_failed_step_newest_first(failed: str, expected: list[str]) -> None:
    assert names(CHECKOUT.compensations_through(failed)) == expected


def test_unknown_step_is_refused() -> None:
    with pytest.raises(KeyError):
        CHECKOUT.compensations_through("teleport_goods")


def test_definition_rules_are_checked() -> None:
    a, b, c = Step("a", "order.a"), Step("b", "order.b"), Step("c", "order.c")
    with pytest.raises(ValueError, match="repeat"):
        Saga("dup", ((a,), (a,)), "order.x", "order.y")
    with pytest.raises(ValueError, match="last phase"):
        Saga("tail", ((a,), (b, c)), "order.x", "order.y")
    with pytest.raises(ValueError, match="followed by a single step"):
        Saga("join", ((a, b), (c, Step("d", "order.d")), (Step("e", "order.e"),)), "order.x", "order.y")


def test_an_order_follows_the_definition_of_its_version() -> None:
    assert DEFINITIONS.current is CHECKOUT and DEFINITIONS.current_version == SAGA_VERSION == 1
    shorter = Saga("checkout", CHECKOUT.phases[1:], CHECKOUT.compensate_task, CHECKOUT.cancel_task)
    both = SagaDefinitions(2, {1: CHECKOUT, 2: shorter})
    assert both.current is shorter and both.versions == (1, 2)
    assert both.for_order(1) is CHECKOUT and both.for_order(2) is shorter
    assert both.for_order(None) is CHECKOUT  # a row from before versions were kept
    with pytest.raises(UnknownSagaVersion, match=r"no definition version 3 \(this code has 1, 2\)"):
        both.for_order(3)
    with pytest.raises(ValueError, match="no version 2 to make current"):
        SagaDefinitions(2, {1: CHECKOUT})
