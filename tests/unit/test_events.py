"""The event catalogue: one registry, the design's topics, and a consumer for each."""

from datetime import UTC
from typing import Any

import pytest
from pydantic import ValidationError

from app.domain.events import FAILURE_EVENTS, REGISTRY, Envelope, OrderPlaced, UnreadableEvent
from app.domain.subscriptions import SUBSCRIPTIONS
from app.domain.values import Address, PostalAddress, PricedLine

TOPICS = {
    "orders.order.placed",
    "orders.order.completed",
    "orders.order.cancelled",
    "inventory.stock.reserved",
    "inventory.stock.reservation_failed",
    "inventory.stock.released",
    "inventory.stock.committed",
    "payments.payment.authorized",
    "payments.payment.declined",
    "payments.payment.captured",
    "payments.payment.voided",
    "payments.payment.refunded",
    "payments.payment.failed",
    "shipping.shipment.scheduled",
    "shipping.shipment.failed",
    "shipping.shipment.cancelled",
}


def test_registry_holds_the_design_catalogue() -> None:
    assert {cls.TOPIC for cls in REGISTRY.values()} == TOPICS
    assert FAILURE_EVENTS <= set(REGISTRY)


def test_every_event_type_has_a_consumer() -> None:
    missing = [name for name in REGISTRY if not SUBSCRIPTIONS.get(name)]
    assert missing == []


def test_envelope_round_trips_through_json() -> None:
    evt = OrderPlaced(
        order_id="o-1",
        customer_id="c-1",
        ship_to=PostalAddress(**Address(country="FR").model_dump()),
        lines=(PricedLine(sku="MUG-01", qty=2, unit_price_cents=1299),),
        total_cents=2598,
        currency="EUR",
    )
    env = Envelope.wrap(evt, causation_id="cmd-1")
    wire = env.to_wire()
    back = Envelope.model_validate(wire)
    assert back == env
    assert back.open() == evt
    assert back.occurred_at.tzinfo == UTC
    assert (back.key, back.correlation_id, back.service, back.topic) == ("o-1", "o-1", "order", "orders.order.placed")
    assert isinstance(wire["payload"]["total_cents"], int)


def _placed_wire() -> dict[str, Any]:
    evt = OrderPlaced(
        order_id="o-2",
        customer_id="c-2",
        ship_to=PostalAddress(**Address(country="FR").model_dump()),
        lines=(PricedLine(sku="MUG-01", qty=1, unit_price_cents=1299),),
        total_cents=1299,
        currency="EUR",
    )
    return Envelope.wrap(evt).to_wire()


def test_the_envelope_ignores_metadata_it_does_not_know_and_still_validates_the_payload() -> None:
    # a newer producer added envelope metadata this code has never heard of
    wire = {**_placed_wire(), "attempts": 2, "duration_ms": 40, "trace_parent": "00-abc-def-01"}
    env = Envelope.model_validate(wire)
    assert "trace_parent" not in env.model_dump() and "trace_parent" not in env.to_wire()
    assert (env.attempts, env.duration_ms) == (2, 40)
    assert isinstance(env.open(), OrderPlaced)
    # ... but a payload is still held to its type's model
    broken = {**wire, "payload": {**wire["payload"], "total_cents": -1}}
    with pytest.raises(ValidationError, match="total_cents"):
        Envelope.model_validate(broken).open()


def test_a_payload_field_unknown_to_its_version_is_refused() -> None:
    wire = _placed_wire()
    wire["payload"]["gift_wrap"] = True
    env = Envelope.model_validate(wire)  # the envelope itself is fine
    with pytest.raises(ValidationError, match="gift_wrap"):
        env.open()


def test_an_unknown_version_or_type_is_unreadable() -> None:
    newer = {**_placed_wire(), "version": 9}
    reason = r"OrderPlaced v9 is newer than this worker reads \(up to v2\): upgrade the consumer, then redrive"
    with pytest.raises(UnreadableEvent, match=reason):
        Envelope.model_validate(newer).open()
    unknown = {**_placed_wire(), "event_type": "OrderTeleported"}
    with pytest.raises(UnreadableEvent, match="unknown event type 'OrderTeleported'"):
        Envelope.model_validate(unknown).open()
