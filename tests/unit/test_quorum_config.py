"""RabbitMQ queue types: the settings, the queues they declare, and what quorum queues
change about retry countdowns (no broker here; tests/brokers/test_quorum_queues.py runs
them on RabbitMQ)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from app.messaging.tasks import _headers
from config.celery import celery_config, dead_letter_queues, retry_countdown, service_queues
from config.settings import SERVICES, Settings

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_classic_is_the_default_and_quorum_queues_carry_the_delivery_limit() -> None:
    assert Settings(broker_url=AMQP).rabbitmq_queue_type == "classic"
    conf = celery_config(Settings(broker_url=AMQP, rabbitmq_queue_type="quorum", rabbitmq_delivery_limit=7))
    for queue in conf["task_queues"]:
        assert queue.queue_arguments == {
            "x-dead-letter-exchange": "checkout.dlx",
            "x-dead-letter-routing-key": f"{queue.name}.dlq",
            "x-queue-type": "quorum",
            "x-delivery-limit": 7,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        assert queue.durable
    assert conf["broker_transport_options"]["confirm_publish"] is True
    assert [q.queue_arguments for q in dead_letter_queues("quorum")] == [{"x-queue-type": "quorum"}] * len(SERVICES)
    assert [q.queue_arguments for q in dead_letter_queues()] == [{}] * len(SERVICES)
    classic = service_queues("amqp")
    assert all("x-queue-type" not in q.queue_arguments for q in classic)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rabbitmq_queue_type": "quorum"}, "CHECKOUT_RABBITMQ_QUEUE_TYPE=quorum needs a RabbitMQ broker"),
        (
            {"broker_url": "redis://127.0.0.1:6379/0", "rabbitmq_queue_type": "quorum"},
            "CHECKOUT_RABBITMQ_QUEUE_TYPE=quorum needs a RabbitMQ broker",
        ),
        ({"broker_url": AMQP, "rabbitmq_delivery_limit": 3}, "CHECKOUT_RABBITMQ_DELIVERY_LIMIT applies to quorum"),
        ({"broker_url": AMQP, "rabbitmq_queue_type": "quorum", "rabbitmq_delivery_limit": 0}, "greater than or equal"),
        ({"broker_url": AMQP, "rabbitmq_queue_type": "stream"}, "classic"),
    ],
)
def test_settings_that_cannot_work_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]


def test_quorum_countdowns_are_whole_seconds_and_never_shorter() -> None:
    quorum = Settings(broker_url=AMQP, rabbitmq_queue_type="quorum")
    classic = Settings(broker_url=AMQP)
    assert [retry_countdown(quorum, s) for s in (0.05, 0.2, 1.0, 1.01, 2.7)] == [1.0, 1.0, 1.0, 2.0, 3.0]
    assert retry_countdown(classic, 0.2) == 0.2
    assert retry_countdown(Settings(), 0.2) == 0.2
    # the database backend's chord polling is a countdown too
    assert celery_config(quorum)["result_chord_retry_interval"] == 1.0
    assert celery_config(classic)["result_chord_retry_interval"] == 0.2


def test_a_message_sent_again_carries_no_dead_letter_history() -> None:
    """RabbitMQ would hold back (or drop) a retry dead-lettered into a queue its x-death
    history names — the delayed-delivery queues a quorum queue's retries pass through."""
    request = SimpleNamespace(
        headers={
            "x_correlation_id": "c1",
            "x-death": [{"queue": "celery_delayed_0", "reason": "expired"}],
            "x-first-death-queue": "celery_delayed_0",
            "x-delivery-count": 2,
        }
    )
    assert _headers(SimpleNamespace(request=request)) == {"x_correlation_id": "c1"}  # type: ignore[arg-type]
