"""Delayed delivery is set up through the node the consumer is connected to first."""

from __future__ import annotations

from app.messaging.consumer import CheckoutConsumer
from app.messaging.delayed_delivery import node_of, setup_order

NODES = [f"amqp://guest:guest@127.0.0.1:{port}/vh" for port in (5672, 5673, 5674)]


def test_the_connected_node_comes_first_and_the_rest_keep_their_order() -> None:
    assert setup_order(NODES, ("127.0.0.1", 5673)) == [NODES[1], NODES[0], NODES[2]]
    assert setup_order(NODES, ("127.0.0.1", 5674)) == [NODES[2], NODES[0], NODES[1]]


def test_without_a_connection_the_list_is_tried_in_order() -> None:
    assert setup_order(NODES, None) == NODES
    assert setup_order(NODES, ("elsewhere", 5672)) == NODES


def test_a_url_names_its_node() -> None:
    assert node_of(NODES[2]) == ("127.0.0.1", 5674)


def test_the_workers_consumer_uses_the_step_instead_of_celerys() -> None:
    steps = CheckoutConsumer.Blueprint.default_steps
    assert "app.messaging.delayed_delivery:DelayedDeliveryOnce" in steps
    assert not any(step.endswith(":DelayedDelivery") for step in steps)
    assert "app.messaging.heartbeat:Heart" in steps and "celery.worker.consumer.heart:Heart" not in steps
