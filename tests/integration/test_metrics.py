"""The saga metrics, read from the embedded system's state after a few sagas ran."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

import app
from app.api import System
from app.operations.metrics import exposition
from config.settings import SERVICES, Settings
from tests.conftest import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and want <= got)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The outbox sweep left to events whose send was lost: on a busy machine the send after
    a commit can be marked later than the tests' short grace, and the sweep then delivers
    the event twice. The copy is absorbed, but a copy may be the one whose first attempt
    finds the flaky gateway recovered, and the retries counted below are of one delivery."""
    return settings.model_copy(update={"outbox_grace_seconds": 60.0})


@pytest.mark.timeout(120)
def test_metrics_count_what_the_sagas_did(api: System, saga_mode: str) -> None:
    mug = [{"sku": "MUG-01", "qty": 1}]
    orders = [
        ("ok-1", mug, "tok_ok"),
        ("ok-2", mug, "tok_ok"),
        ("declined", mug, "tok_declined"),
        ("flaky", mug, "tok_flaky"),
        ("no-stock", [{"sku": "POSTER-01", "qty": 26}], "tok_ok"),
    ]
    ids = [app.place_order(f"cust-{label}", items, payment_token=token) for label, items, token in orders]
    for order_id in ids:
        assert app.wait_for_order(order_id, timeout=60).terminal

    def settled() -> Samples | None:
        samples = parse(exposition(api.runtime))
        drained = all(value(samples, "checkout_queue_messages", queue=q) == 0 for q in SERVICES)
        started = value(samples, "checkout_sagas_started_total") == len(orders)
        return samples if drained and started else None

    samples = wait_until(settled, timeout=30, what="every saga started and every queue drained")
    assert value(samples, "checkout_orders_placed_total") == 5
    assert value(samples, "checkout_sagas_completed_total") == 3
    assert value(samples, "checkout_sagas_cancelled_total", reason="card_declined") == 1
    assert value(samples, "checkout_sagas_cancelled_total", reason="out_of_stock") == 1
    assert total(samples, "checkout_sagas_cancelled_total") == 2
    assert value(samples, "checkout_sagas_in_flight") == 0
    assert value(samples, "checkout_sagas_needing_attention") == 0
    assert value(samples, "checkout_saga_duration_seconds_count", status="completed") == 3
    assert value(samples, "checkout_saga_duration_seconds_count", status="cancelled") == 2
    assert value(samples, "checkout_saga_duration_seconds_bucket", status="completed", le="+Inf") == 3
    assert value(samples, "checkout_saga_duration_seconds_sum", status="completed") > 0
    # the flaky authorization took two retries; nothing else retried
    assert value(samples, "checkout_step_retries_total", service="payment", step="authorize_payment") == 2
    assert total(samples, "checkout_step_retries_total") == 2
    assert value(samples, "checkout_steps_total", service="payment", step="capture_payment", outcome="done") == 3
    voids = total(samples, "checkout_steps_total", service="payment", step="void_payment", outcome="done")
    if saga_mode == "orchestration":  # the chord lets the no-stock order's authorization finish, then voids it
        assert voids == 1
    else:  # payment may hear of the stock failure before it authorized: then there is nothing to void
        assert voids in (0, 1)
    assert total(samples, "checkout_dead_letters") == 0
    for source in ("orders", "steps", "dead_letters", "broker"):
        assert value(samples, "checkout_metrics_source_up", source=source) == 1
