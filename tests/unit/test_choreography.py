"""Choreography without a broker: the services' reactions, run through their real task
adapters (``Task.apply``), with the events delivered in an order this test chooses.

* shipping's durable join books a shipment once it has the order, the stock and the
  payment — in any order, each seen any number of times;
* one saga's events delivered shuffled and duplicated end in the same state as delivered
  in order, for every row of the test vocabulary.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.adapters.fake_gateway import ledger
from app.api import validate_order
from app.bootstrap import Runtime
from app.domain.events import Envelope, InventoryReserved, OrderPlaced, PaymentAuthorized
from app.domain.values import Address, Line, PostalAddress, PricedLine
from app.operations.eventgraph import EMITS
from app.services.payment import payments
from app.services.shipping import shipments
from config.settings import Settings
from tests.conftest import purge_memory_broker

#: label -> place_order arguments (the test vocabulary, tok_down aside: its retries are slow)
ROWS: dict[str, dict[str, Any]] = {
    "tok_ok": {"items": [{"sku": "MUG-01", "qty": 2}]},
    "tok_declined": {"items": [{"sku": "MUG-01", "qty": 1}], "payment_token": "tok_declined"},
    "tok_flaky": {"items": [{"sku": "LAMP-01", "qty": 1}], "payment_token": "tok_flaky"},
    "out_of_stock": {"items": [{"sku": "POSTER-01", "qty": 26}]},
    "ship_to_AQ": {"items": [{"sku": "MUG-01", "qty": 1}], "ship_to": {"country": "AQ"}},
}


def choreography(tmp_path: Path) -> Runtime:
    settings = Settings(data_dir=tmp_path, retry_base_seconds=0.01, retry_cap_seconds=0.02, saga_mode="choreography")
    rt = Runtime(settings)
    rt.prepare()
    return rt


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[list[Runtime]]:
    made: list[Runtime] = []
    purge_memory_broker()
    yield made
    for rt in made:
        rt.close()
    purge_memory_broker()


def all_events(rt: Runtime) -> list[Envelope]:
    return [env for db in rt.databases.values() for env in db.log()]


def run_saga(rt: Runtime, label: str, rng: random.Random | None) -> str:
    """Place one order and deliver every event to every consumer the choreography table
    names, until no new event appears: in order (``rng`` None), or each round's deliveries
    shuffled with about a third of them delivered twice."""
    order_id, _ = rt.order.place(validate_order(f"cust-{label}", **ROWS[label]))
    delivered: set[str] = set()
    sent: dict[str, str] = {}  # message id -> task
    for _round in range(50):
        new = [env for env in all_events(rt) if env.event_id not in delivered]
        if not new:
            # the event graph's table of what each task emits holds what the tasks did emit
            caused = [env for env in all_events(rt) if env.causation_id in sent]
            assert caused, "no event names the task message that caused it"
            for env in caused:
                assert env.event_type in EMITS[sent[env.causation_id]], (sent[env.causation_id], env.event_type)
            return order_id
        delivered.update(env.event_id for env in new)
        deliveries = [(task, env) for env in new for task in rt.consumers_of(env.event_type)]
        if rng is not None:
            deliveries += [d for d in deliveries if rng.random() < 0.35]
            rng.shuffle(deliveries)
        for task, env in deliveries:
            message_id = f"{task}#{len(sent)}"
            sent[message_id] = task
            result = rt.celery.tasks[task].apply(args=(env.to_wire(),), task_id=message_id)
            assert result.successful() or result.state == "REJECTED", (task, env.event_type, result.result)
    raise AssertionError("the saga never came to rest")


def final_state(rt: Runtime, order_id: str) -> dict[str, Any]:
    view = rt.order.view(order_id)
    pay = rt.databases["payment"].query(lambda c: c.execute(select(payments)).all())
    ship = rt.databases["shipping"].query(lambda c: c.execute(select(shipments)).all())
    gateway = rt.databases["payment"].query(lambda c: c.execute(select(ledger.c.operation, ledger.c.outcome)).all())
    return {
        "order": (view.status, view.reason),
        "stock": {sku: (s.available, s.reserved, s.committed) for sku, s in rt.inventory.levels().items()},
        "payment": sorted((p.status, p.captured_cents, p.refunded_cents) for p in pay),
        "shipment": sorted(s.status for s in ship),
        "gateway": sorted((g.operation, g.outcome) for g in gateway if g.outcome != "pending"),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("label", sorted(ROWS))
def test_shuffled_and_duplicated_events_reach_the_in_order_state(
    runtimes: list[Runtime], tmp_path: Path, label: str
) -> None:
    runtimes.append(choreography(tmp_path / "in-order"))
    in_order = runtimes[-1]
    expected = final_state(in_order, run_saga(in_order, label, None))
    assert expected["order"][0] in {"COMPLETED", "CANCELLED"}, expected
    for seed in range(3):
        runtimes.append(choreography(tmp_path / f"shuffled-{seed}"))
        rt = runtimes[-1]
        got = final_state(rt, run_saga(rt, label, random.Random(seed)))
        # a payment branch the stock failure pre-empted never reaches the gateway: equal
        # outcomes, fewer gateway calls
        if expected["order"] == ("CANCELLED", "out_of_stock"):
            assert got["gateway"] in ([], expected["gateway"]) or all(op != "ok" for _, op in got["gateway"])
            got["gateway"] = expected["gateway"]
            got["payment"] = expected["payment"] if not got["payment"] else got["payment"]
        assert got == expected, f"seed {seed}"


# --- shipping's durable join ------------------------------------------------------------


def join_events(order_id: str) -> list[Envelope]:
    lines = (Line(sku="MUG-01", qty=1),)
    return [
        Envelope.wrap(
            OrderPlaced(
                order_id=order_id,
                customer_id="c",
                ship_to=PostalAddress(**Address(country="FR").model_dump()),
                lines=tuple(PricedLine(**line.model_dump(), unit_price_cents=1299) for line in lines),
                total_cents=1299,
                currency="EUR",
                payment_token="tok_ok",
            )
        ),
        Envelope.wrap(InventoryReserved(order_id=order_id, lines=lines)),
        Envelope.wrap(PaymentAuthorized(order_id=order_id, amount_cents=1299, currency="EUR")),
    ]


@pytest.mark.timeout(60)
def test_the_join_is_ready_only_with_all_three_in_any_order_and_any_repeats(tmp_path: Path) -> None:
    rt = choreography(tmp_path)
    try:
        for n, order in enumerate(itertools.permutations(range(3))):
            order_id = f"join-{n}"
            events = join_events(order_id)
            for position, index in enumerate(order):
                ready = rt.shipping.join(events[index])
                assert (ready is not None) == (position == 2), (order, position)
                again = rt.shipping.join(events[index])  # a duplicate changes nothing
                assert (again is not None) == (position == 2)
            assert ready is not None and ready.ship_to.country == "FR" and ready.lines[0].sku == "MUG-01"
        with pytest.raises(ValueError, match="does not join on"):
            rt.shipping.join(
                Envelope.wrap(InventoryReserved(order_id="x", lines=())).model_copy(
                    update={"event_type": "ShipmentScheduled"}
                )
            )
    finally:
        rt.close()
