"""Event versions: OrderPlaced v1 read as v2 through its upcaster, v2 written as v1 through
its downcaster (``CHECKOUT_EMIT_VERSIONS``), a version newer than the code refused with a
reason that says what to do, and the chain v1 -> v2 -> v3 once a v3 is registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.api import validate_order
from app.bootstrap import Runtime
from app.cli import main
from app.domain import events, upcasting
from app.domain.events import (
    REGISTRY,
    VERSIONS,
    Envelope,
    OrderPlaced,
    OrderPlacedV1,
    UnreadableEvent,
    emit_versions,
)
from app.domain.upcasting import DOWNCASTERS, UPCASTERS, downcast, upcast
from app.domain.values import DEFAULT_ADDRESS
from config.settings import Settings
from tests.conftest import purge_memory_broker
from tests.support.upgrade import OrderPlacedV3, read_v3

pytestmark = pytest.mark.timeout(60)

PLACEHOLDERS = {"name": "Customer", "line1": "1 Main Street", "city": "London", "postal_code": "SW1A 1AA"}


def v1(lines: list[dict[str, Any]], total: int, ship_to: dict[str, str] | None = None) -> dict[str, Any]:
    """An OrderPlaced v1 payload as v1 code wrote it."""
    payload = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "ship_to": ship_to or {"country": "FR"},
        "lines": lines,
        "total_cents": total,
        "currency": "EUR",
        "payment_token": None,
    }
    OrderPlacedV1.model_validate(payload)
    return payload


def v1_envelope(payload: dict[str, Any]) -> Envelope:
    return Envelope.model_validate({**Envelope.wrap(OrderPlacedV1.model_validate(payload)).to_wire(), "version": 1})


def prices(payload: dict[str, Any]) -> list[int | None]:
    return [line["unit_price_cents"] for line in payload["lines"]]


def test_one_sku_takes_its_price_from_the_total() -> None:
    lifted = upcast("OrderPlaced", 1, v1([{"sku": "MUG-01", "qty": 2}, {"sku": "MUG-01", "qty": 1}], 3 * 1000))
    assert prices(lifted) == [1000, 1000]  # not the catalog's 1299: the total says what was paid
    assert prices(upcast("OrderPlaced", 1, v1([{"sku": "MUG-01", "qty": 3}], 1000))) == [None]  # 1000/3: no price


def test_several_skus_take_the_catalog_prices_only_when_they_add_up_to_the_total() -> None:
    lines = [{"sku": "MUG-01", "qty": 2}, {"sku": "TEE-01", "qty": 1}]
    assert prices(upcast("OrderPlaced", 1, v1(lines, 2 * 1299 + 2499))) == [1299, 2499]
    assert prices(upcast("OrderPlaced", 1, v1(lines, 2 * 1299 + 2000))) == [None, None]  # prices were others
    unknown = [{"sku": "MUG-01", "qty": 1}, {"sku": "GONE-01", "qty": 1}]
    assert prices(upcast("OrderPlaced", 1, v1(unknown, 2000))) == [None, None]


def test_an_address_keeps_its_fields_and_gets_v1s_placeholders_for_the_rest() -> None:
    given = {"country": "GB", "city": "Leeds"}
    lifted = upcast("OrderPlaced", 1, v1([{"sku": "MUG-01", "qty": 1}], 1299, given))
    assert lifted["ship_to"] == {**PLACEHOLDERS, **given}
    assert (
        OrderPlacedV1.model_validate(v1([{"sku": "MUG-01", "qty": 1}], 1299, given)).ship_to.model_dump()
        == (
            lifted["ship_to"]  # what a v1 reader saw
        )
    )


def test_a_v1_envelope_opens_as_the_latest_version_and_stays_v1_as_written() -> None:
    env = v1_envelope(v1([{"sku": "BOOK-01", "qty": 2}], 2 * 4599))
    evt = env.open()
    assert type(evt) is OrderPlaced and evt.VERSION == 2
    assert evt.lines[0].unit_price_cents == 4599 and evt.ship_to.city == "London"
    assert evt.quantities()[0].model_dump() == {"sku": "BOOK-01", "qty": 2}
    assert env.version == 1 and "unit_price_cents" not in env.payload["lines"][0]  # never rewritten
    assert env.upcast().version == 2 and env.upcast().payload == evt.model_dump(mode="json")


def test_a_v1_payload_is_still_held_to_the_v1_model() -> None:
    wire = v1_envelope(v1([{"sku": "MUG-01", "qty": 1}], 1299)).to_wire()
    wire["payload"]["lines"][0]["unit_price_cents"] = 1299  # a v2 field in a v1 event
    with pytest.raises(ValidationError, match="unit_price_cents"):
        Envelope.model_validate(wire).open()


def test_the_downcaster_writes_a_v1_that_upcasts_back_to_the_same_v2() -> None:
    placed = Envelope.wrap(
        OrderPlaced.model_validate(
            {
                **v1([{"sku": "MUG-01", "qty": 2}, {"sku": "LAMP-01", "qty": 1}], 2 * 1299 + 3999),
                "ship_to": DEFAULT_ADDRESS.model_dump(),
                "lines": [
                    {"sku": "MUG-01", "qty": 2, "unit_price_cents": 1299},
                    {"sku": "LAMP-01", "qty": 1, "unit_price_cents": 3999},
                ],
            }
        )
    )
    as_v1 = Envelope.wrap(placed.open(), version=1)
    assert as_v1.version == 1 and as_v1.topic == placed.topic
    assert OrderPlacedV1.model_validate(as_v1.payload).lines[1].sku == "LAMP-01"
    assert as_v1.open() == placed.open()
    with pytest.raises(LookupError, match="no downcaster from version 1"):
        downcast("OrderCompleted", 1, {}, 0)


def test_a_version_newer_than_the_code_says_to_upgrade_the_consumer() -> None:
    wire = {**v1_envelope(v1([{"sku": "MUG-01", "qty": 1}], 1299)).to_wire(), "version": 9}
    with pytest.raises(UnreadableEvent) as refused:
        Envelope.model_validate(wire).open()
    assert str(refused.value) == (
        "OrderPlaced v9 is newer than this worker reads (up to v2): upgrade the consumer, then redrive"
    )


def test_every_old_version_has_an_upcaster_to_the_next_and_every_downcaster_a_target() -> None:
    for (type_, version), cls in VERSIONS.items():
        assert cls.TYPE == type_ and cls.VERSION == version
        if version < REGISTRY[type_].VERSION:
            assert (type_, version) in UPCASTERS, f"{type_} v{version} has no upcaster"
    assert all((type_, version - 1) in VERSIONS for type_, version in DOWNCASTERS)
    with pytest.raises(ValueError, match="version 2 registered twice"):
        events.event("OrderPlaced", "orders.order.placed", version=2)(OrderPlaced)


@pytest.fixture
def upgraded(monkeypatch: pytest.MonkeyPatch) -> type[OrderPlaced]:
    read_v3(monkeypatch)
    return OrderPlacedV3


def test_the_upcasters_chain_from_v1_to_v3(upgraded: type[OrderPlaced]) -> None:
    evt = v1_envelope(v1([{"sku": "MUG-01", "qty": 1}], 1299)).open()
    assert isinstance(evt, upgraded) and evt.VERSION == 3
    assert evt.lines[0].unit_price_cents == 1299 and evt.model_dump()["gift_note"] is None
    assert upcasting.upcast("OrderPlaced", 1, v1([{"sku": "MUG-01", "qty": 1}], 1299))["gift_note"] is None


def test_emit_versions_are_checked_against_the_code() -> None:
    assert emit_versions({"OrderPlaced": 1}) == {"OrderPlaced": 1}
    assert emit_versions({"OrderPlaced": 2}) == {}  # the latest: nothing to do
    with pytest.raises(ValueError, match="unknown event type 'OrderTeleported'"):
        emit_versions({"OrderTeleported": 1})
    with pytest.raises(ValueError, match="OrderPlaced=3: this code writes OrderPlaced v2"):
        emit_versions({"OrderPlaced": 3})
    with pytest.raises(ValueError, match="OrderCompleted=2"):
        emit_versions({"OrderCompleted": 2})
    assert Settings(emit_versions=" OrderPlaced=1 ").emit_version_map == {"OrderPlaced": 1}
    for bad in ("OrderPlaced", "OrderPlaced=0", "OrderPlaced=one", "OrderPlaced=1,OrderPlaced=1"):
        with pytest.raises(ValidationError, match="emit_versions"):
            Settings(emit_versions=bad)


def test_a_version_the_code_cannot_write_stops_a_command_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHECKOUT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHECKOUT_EMIT_VERSIONS", "OrderPlaced=3")
    assert main(["orders", "list"]) == 2
    assert capsys.readouterr().err == (
        "configuration error (see `python -m app settings --help`):\n"
        "  CHECKOUT_EMIT_VERSIONS: OrderPlaced=3: this code writes OrderPlaced v2 and cannot write that version\n"
    )


def test_the_order_service_writes_the_version_it_is_told_and_a_consumer_of_v2_reads_it(settings: Settings) -> None:
    runtime = Runtime(settings.model_copy(update={"emit_versions": "OrderPlaced=1"}))
    runtime.prepare()
    try:
        order_id, _ = runtime.order.place(validate_order("c", [{"sku": "LAMP-01", "qty": 2}]))
        (written,) = [env for env in runtime.databases["order"].log(order_id) if env.event_type == "OrderPlaced"]
        assert written.version == 1 and OrderPlacedV1.model_validate(written.payload).lines[0].qty == 2
        assert runtime.celery.tasks["order.start"].apply(args=(written.to_wire(),)).successful()
        assert runtime.dead_letters.find(order_id=order_id) == []
        evt = written.open()
        assert isinstance(evt, OrderPlaced) and evt.lines[0].unit_price_cents == 3999
    finally:
        runtime.close()
        purge_memory_broker()  # the saga it started stays queued, unsent to any worker
