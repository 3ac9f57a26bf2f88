"""Admission control and the sweeper's recovery rules, with no broker: what is refused,
what is re-driven, and what is sent again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.api import validate_order
from app.domain.admission import Admission, Limits, Load, decide
from app.domain.errors import Busy
from app.domain.events import Envelope, InventoryReserved, OrderCompleted
from app.domain.subscriptions import CHOREOGRAPHY, ORCHESTRATION, subscriptions
from app.domain.values import Line
from app.operations.sweeper import Evidence
from app.persistence.db import utcnow
from app.persistence.outbox import Relay
from app.services.order import MAX_REDRIVE_BACKOFF, orders, redrive_backoff
from tests.conftest import Services

LIMITS = Limits(target_seconds=10, min_in_flight=20, max_in_flight=1000, refresh_seconds=0.5)


# --- the decision -----------------------------------------------------------------------


def test_a_quiet_system_admits() -> None:
    assert decide(Load(in_flight=0, oldest_age_seconds=0, finished=0, window_seconds=10), LIMITS) is None
    assert decide(Load(in_flight=50, oldest_age_seconds=2, finished=200, window_seconds=10), LIMITS) is None


def test_a_burst_into_an_idle_system_is_not_a_backlog_until_it_has_waited() -> None:
    # 500 just placed, nothing finished yet: in-flight / rate is unbounded, the oldest is young
    assert decide(Load(in_flight=500, oldest_age_seconds=3, finished=0, window_seconds=10), LIMITS) is None


def test_a_backlog_over_the_target_is_refused_with_a_retry_after() -> None:
    # 600 in flight at 20 finished/s: 30 s of work queued, and the oldest has waited 30 s
    refusal = decide(Load(in_flight=600, oldest_age_seconds=30, finished=200, window_seconds=10), LIMITS)
    assert isinstance(refusal, Busy)
    assert refusal.retry_after == 20  # the excess over the target drains in about 20 s
    assert "backlog 30.0s > target 10s" in refusal.signal and "600 sagas in flight" in refusal.signal


def test_a_few_stuck_sagas_in_a_quiet_system_do_not_close_the_door() -> None:
    # three lost sagas, an hour old, nothing else going on: the sweeper's business
    assert decide(Load(in_flight=3, oldest_age_seconds=3600, finished=0, window_seconds=10), LIMITS) is None
    # ... nor do they in a busy one: the others keep finishing, so the backlog is short
    assert decide(Load(in_flight=60, oldest_age_seconds=3600, finished=300, window_seconds=10), LIMITS) is None


def test_nothing_finishing_while_work_waits_is_refused() -> None:
    refusal = decide(Load(in_flight=40, oldest_age_seconds=12, finished=0, window_seconds=10), LIMITS)
    assert isinstance(refusal, Busy) and refusal.retry_after == LIMITS.target_seconds


def test_the_in_flight_limit_refuses_whatever_the_rate() -> None:
    refusal = decide(Load(in_flight=1000, oldest_age_seconds=1, finished=5000, window_seconds=10), LIMITS)
    assert isinstance(refusal, Busy) and "limit 1000" in refusal.signal


def test_retry_after_is_whole_seconds_between_1_and_60() -> None:
    small = decide(Load(in_flight=210, oldest_age_seconds=60, finished=200, window_seconds=10), LIMITS)
    huge = decide(Load(in_flight=90000, oldest_age_seconds=9000, finished=10, window_seconds=10), LIMITS)
    assert small is not None and small.retry_after == 1
    assert huge is not None and huge.retry_after == 60


def test_a_target_of_zero_turns_admission_control_off() -> None:
    off = Limits(target_seconds=0, min_in_flight=0, max_in_flight=1, refresh_seconds=0)
    assert decide(Load(in_flight=10**6, oldest_age_seconds=10**5, finished=0, window_seconds=10), off) is None


# --- one process's admission: measured at most once a refresh -----------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refusals_cost_no_measurement_between_refreshes() -> None:
    clock, measured, recorded = Clock(), [], []
    busy = Load(in_flight=600, oldest_age_seconds=30, finished=200, window_seconds=10)

    def measure() -> Load:
        measured.append(clock.now)
        return busy

    admission = Admission(measure, LIMITS, recorded.append, clock=clock)
    for _ in range(100):
        with pytest.raises(Busy):
            admission.check()
    assert measured == [100.0] and admission.refused == 100 and recorded == []
    clock.now += LIMITS.refresh_seconds
    with pytest.raises(Busy):
        admission.check()
    assert measured == [100.0, 100.5]
    assert recorded == [100]  # the refusals so far are recorded with the next measurement, off their path


# --- the order service's measurement ------------------------------------------------------


def _age(svc: Services, order_id: str, **ages: float) -> None:
    now = utcnow()
    values = {column: now - timedelta(seconds=seconds) for column, seconds in ages.items()}
    svc.dbs["order"].run(
        lambda uow: uow.conn.execute(update(orders).where(orders.c.order_id == order_id).values(**values))
    )


def _place(svc: Services, n: int) -> str:
    order_id, _ = svc.order.place(validate_order(f"cust-{n}", [{"sku": "MUG-01", "qty": 1}]))
    return order_id


def test_the_load_counts_sagas_in_flight_their_oldest_and_those_finished_lately(services: Services) -> None:
    ids = [_place(services, n) for n in range(4)]
    _age(services, ids[0], created_at=40)
    services.dbs["order"].run(
        lambda uow: uow.conn.execute(
            update(orders)
            .where(orders.c.order_id.in_(ids[2:]))
            .values(status="COMPLETED", finished_at=utcnow() - timedelta(seconds=1))
        )
    )
    _age(services, ids[3], finished_at=60)  # finished, but before the window
    load = services.order.load(window_seconds=10)
    assert (load.in_flight, load.finished, load.window_seconds) == (2, 1, 10)
    assert 39 < load.oldest_age_seconds < 45


def test_refusals_are_recorded_for_every_process(services: Services) -> None:
    assert services.order.refusals() == 0
    services.order.count_refusals(3)
    services.order.count_refusals(4)
    assert services.order.refusals() == 7


# --- the sweeper: stalled, lost or queued, backoff ---------------------------------------------


def test_a_saga_that_moves_is_not_stalled_however_old(services: Services) -> None:
    order_id = _place(services, 0)
    _age(services, order_id, created_at=4000, deadline_at=3700)  # long past its deadline ...
    assert services.order.stalled() == []  # ... but it recorded progress just now
    _age(services, order_id, updated_at=400)
    assert [oid for oid, _ in services.order.stalled()] == [order_id]


def test_a_stalled_saga_is_lost_only_if_nothing_it_waits_for_can_be_queued() -> None:
    now = utcnow()
    progress = now - timedelta(seconds=400)
    assert Evidence(waiting=0, front=None).lost(progress)  # every queue is empty
    assert Evidence(waiting=500, front=now - timedelta(seconds=10)).lost(progress)  # a later order finished
    assert not Evidence(waiting=500, front=progress - timedelta(seconds=1)).lost(progress)  # may be queued
    assert not Evidence(waiting=None, front=None).lost(progress)  # the broker did not say


def test_the_progress_front_is_the_latest_placed_finished_order(services: Services) -> None:
    ids = [_place(services, n) for n in range(3)]
    assert services.order.progress_front() is None
    _age(services, ids[0], created_at=30)
    services.dbs["order"].run(
        lambda uow: uow.conn.execute(update(orders).where(orders.c.order_id == ids[0]).values(status="COMPLETED"))
    )
    front = services.order.progress_front()
    assert front is not None and 29 < (utcnow() - front).total_seconds() < 35


def test_re_drives_back_off_doubling_with_jitter_up_to_a_cap() -> None:
    deadline = timedelta(seconds=10)
    for redrives, base in ((0, 10), (1, 20), (2, 40), (3, 80), (10, 10 * MAX_REDRIVE_BACKOFF)):
        waits = {redrive_backoff(deadline, redrives).total_seconds() for _ in range(50)}
        assert all(base <= w <= base * 1.25 for w in waits), (redrives, waits)
        assert len(waits) > 1  # jittered: sagas lost together are not re-driven together again


def test_a_re_driven_saga_waits_longer_each_time(services: Services) -> None:
    order_id = _place(services, 0)
    gaps = []
    for _ in range(3):
        _age(services, order_id, created_at=100, updated_at=400, deadline_at=1)
        before = utcnow()
        assert services.order.plan_redrive(order_id, timedelta(seconds=900)) is not None
        view = services.order.view(order_id)
        gaps.append((view.deadline_at - before).total_seconds())
    assert 300 <= gaps[0] <= 380 and 600 <= gaps[1] <= 760 and 1200 <= gaps[2] <= 1510, gaps


# --- what is sent again: only the deliveries that show no sign of having arrived ---------------


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        self.messages.append((task, body["event_type"]))


def _emit(svc: Services, service: str, event: Any) -> Envelope:
    return svc.dbs[service].run(lambda uow: uow.emit(event))


def test_only_missing_deliveries_are_sent_again_orchestration(services: Services) -> None:
    order_id = _place(services, 0)
    reserved = _emit(services, "inventory", InventoryReserved(order_id=order_id, lines=(Line(sku="MUG-01", qty=1),)))
    sent = Sent()
    relay = Relay(services.dbs, sent, lambda t: subscriptions(ORCHESTRATION).get(t, ()))
    # the order has not recorded the reservation yet: that delivery only (order.start skipped)
    assert [(t, e.event_type) for e, t in relay.missing(order_id, frozenset({"order.start"}))] == [
        ("order.record", "InventoryReserved")
    ]
    assert relay.redeliver(order_id, frozenset({"order.start"})) == 1
    assert sent.messages == [("order.record", "InventoryReserved")]
    # once the order has recorded it, nothing is missing
    services.order.record(reserved)
    assert relay.redeliver(order_id, frozenset({"order.start"})) == 0
    done = _emit(services, "order", OrderCompleted(order_id=order_id, total_cents=1299, currency="EUR"))
    assert [(t, e.event_type) for e, t in relay.missing(order_id)] == [
        ("order.start", "OrderPlaced"),
        ("inventory.commit", "OrderCompleted"),
    ]
    services.inventory.on_order_completed(done)
    assert [(t, e.event_type) for e, t in relay.missing(order_id, frozenset({"order.start"}))] == []


def test_a_step_consumer_needs_nothing_once_its_step_is_recorded(services: Services) -> None:
    from app.domain.commands import ReserveInventory

    order_id = _place(services, 0)
    relay = Relay(services.dbs, Sent(), lambda t: subscriptions(CHOREOGRAPHY).get(t, ()))
    before = {(t, e.event_type) for e, t in relay.missing(order_id)}
    assert ("inventory.reserve_on_placed", "OrderPlaced") in before
    assert ("payment.authorize_on_placed", "OrderPlaced") in before and ("shipping.join", "OrderPlaced") in before
    services.inventory.reserve(ReserveInventory(order_id=order_id, lines=(Line(sku="MUG-01", qty=1),)))
    after = {(t, e.event_type) for e, t in relay.missing(order_id)}
    assert ("inventory.reserve_on_placed", "OrderPlaced") not in after
    assert ("shipping.join", "InventoryReserved") in after  # its event, to the consumers still without it
    assert ("order.record", "InventoryReserved") in after


def test_a_step_undone_before_it_ran_needs_nothing_sent_again(services: Services) -> None:
    from app.domain.commands import ReleaseInventory

    order_id = _place(services, 0)
    relay = Relay(services.dbs, Sent(), lambda t: subscriptions(CHOREOGRAPHY).get(t, ()))
    services.inventory.release(ReleaseInventory(order_id=order_id))  # prevents the reservation
    assert ("inventory.reserve_on_placed", "OrderPlaced") not in {(t, e.event_type) for e, t in relay.missing(order_id)}
