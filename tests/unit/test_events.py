"""The event catalogue: one registry, the design's topics, and a consumer for each."""

from datetime import UTC

from app.events import FAILURE_EVENTS, REGISTRY, Envelope, OrderPlaced
from app.subscriptions import SUBSCRIPTIONS
from app.values import Address, Line

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
        ship_to=Address(country="FR"),
        lines=(Line(sku="MUG-01", qty=2),),
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
