"""Overload with real processes: twice what the system can finish, for a minute.

The four service workers and ``celery beat`` run as separate processes on Redis or
RabbitMQ, with PostgreSQL. The test first measures the capacity C with a burst (sagas per
second, tests/support/load.py), then offers ``tok_ok`` orders at 2 × C for 60 s (``make soak``:
``SOAK_SECONDS``) from an
open-loop thread in this process: arrivals do not wait for earlier orders, as a shop's
customers do not. Each offer goes through admission control; a refused one (``app.Busy``)
is counted and dropped, as a caller that gives up would.

With deadline 20 s and give-up 90 s, nothing is lost or stuck, and overload must not turn
into collapse:

* every admitted order is terminal within ``DRAIN_LIMIT`` of the offering's end;
* none is cancelled as ``deadline_exceeded`` (no saga waited past its give-up);
* the auditor is clean;
* goodput — orders completed per second while the system is overloaded: the median of
  the 10 s slices of the window that begin after the first refusal (the first seconds only
  fill the pipeline; a median, so that one slice the shared machine stalled does not
  decide, while a collapse, which lasts, does) — is at least 0.8 × C, and that stretch is
  most of the window;
* the sweeper re-drove at most ``REDRIVE_LIMIT`` sagas (a saga that is only queued is
  not re-driven).

C is measured twice, by the same burst: before the window, to size the offered load, and
again once the window's orders have drained, and the goodput is held against the lower of
the two. On a shared machine a burst of a few seconds can catch it at its fastest, or a
neighbour can take a core for the rest of the test; the capacity the machine offered around
the window is the one the window could reach. A collapse is still caught: the system is
idle again for the second burst, so its capacity there is not the window's goodput, and a
system that stays collapsed fails the drain.

It prints what it saw: offered, accepted, refused, goodput against C, drain time, p50/p99
of placement-to-finish, and what a refusal and a placement cost.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.api import System
from app.domain.subscriptions import MODES
from app.operations.audit import audit
from app.persistence.db import as_utc
from app.services.order import orders
from tests.brokers.test_multiprocess import AUDIT_SETTLE
from tests.support.cluster import BrokerNamespace, WaitTimeout, Workers, poll_until
from tests.support.load import Capacity, OpenLoop, measure_capacity, run_seconds

#: Every process runs with these (the test process's Settings too). The deadline and
#: give-up are the ones the scenario names; the admission target sits well below the
#: deadline, so an admitted saga never waits long enough to look overdue.
OVERLOAD_SETTINGS: dict[str, Any] = {
    "saga_deadline_seconds": 20,
    "saga_give_up_seconds": 90,
    "sweep_interval_seconds": 2,
    "visibility_timeout_seconds": 120,
    "publish_retry_seconds": 20,
    "admission_target_seconds": 5,
    "admission_min_in_flight": 20,
    "admission_window_seconds": 5,
    "admission_refresh_seconds": 0.2,
}

#: Offered rate, as a multiple of the capacity measured before the window.
OFFERED_LOAD = 2.0
#: How long the orders are offered (``make soak``: SOAK_SECONDS).
OFFER_SECONDS = run_seconds(60.0)
#: Every admitted order must be terminal this soon after the offering ends.
DRAIN_LIMIT = 60.0
#: Goodput during the window, as a fraction of the capacity, at least.
GOODPUT_FLOOR = 0.8
#: Sagas the sweeper may re-drive at most (a few may be lost to a slow delivery; none is lost
#: for being queued).
REDRIVE_LIMIT = 5
#: The overloaded stretch of the window (first refusal to the end) must last at least this
#: share of it: admission control engages within seconds, once the backlog is at its target.
OVERLOADED_SHARE = 0.6
#: The capacity burst: larger than the fault tests', so the capacity is measured over
#: several seconds of full queues.
OVERLOAD_BURST = 120
#: The report shows goodput slice by slice through the window, too.
SLICE_SECONDS = 10.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(OVERLOAD_SETTINGS)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@pytest.mark.brokers
@pytest.mark.timeout(360 + 2 * OFFER_SECONDS)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_twice_the_capacity_for_a_minute_keeps_goodput_and_loses_nothing(
    broker: BrokerNamespace, system: System, beat: Workers, saga_mode: str, record_property: Any
) -> None:
    customer = f"overload-{broker.kind}-{saga_mode}"

    def burst(name: str) -> Capacity:
        try:
            return measure_capacity(system, f"{customer}-{name}", burst=OVERLOAD_BURST, diagnostics=beat.tails)
        except WaitTimeout as exc:
            pytest.fail(str(exc), pytrace=False)

    before = burst("capacity")
    rate = OFFERED_LOAD * before.sagas_per_second

    def order(n: int) -> dict[str, Any]:
        key = f"{customer}-{n}"
        return {"customer_id": key, "items": [{"sku": "MUG-01", "qty": 1}], "idempotency_key": key}

    window_start = datetime.now(UTC)
    loop = OpenLoop(system, rate, OFFER_SECONDS, order)
    loop.start()
    loop.join(timeout=OFFER_SECONDS + 60)
    assert not loop.is_alive(), "the offering thread did not end"
    window_end = window_start + timedelta(seconds=OFFER_SECONDS)
    ended = time.monotonic()
    assert loop.error is None, f"offering failed: {loop.error!r}"
    offered = loop.offered
    accepted = [order_id for order_id, _at in offered.accepted]

    db = system.runtime.databases["order"]

    def pending() -> int:
        query = select(func.count()).select_from(orders).where(orders.c.status == "PENDING")
        return int(db.query(lambda c: c.execute(query).scalar_one()))

    try:
        poll_until(
            lambda: pending() == 0,
            timeout=DRAIN_LIMIT,
            interval=0.1,
            what=f"every admitted order to finish after the offering ({len(accepted)} admitted)",
            diagnostics=lambda: f"{pending()} still PENDING\n" + beat.tails(),
        )
    except WaitTimeout as exc:
        pytest.fail(str(exc), pytrace=False)
    drain = time.monotonic() - ended

    rows = db.query(
        lambda c: c.execute(
            select(
                orders.c.order_id,
                orders.c.status,
                orders.c.reason,
                orders.c.created_at,
                orders.c.finished_at,
                orders.c.redrives,
            )
        ).all()
    )
    admitted = set(accepted)
    mine = {r.order_id: r for r in rows if r.order_id in admitted}
    outcomes = Counter(f"{r.status}:{r.reason}" if r.reason else r.status for r in mine.values())
    completed_at = [as_utc(r.finished_at) for r in rows if r.status == "COMPLETED"]  # burst orders too
    window_goodput = sum(1 for at in completed_at if window_start <= at <= window_end) / OFFER_SECONDS
    assert offered.first_refusal is not None, (
        f"nothing refused at {OFFERED_LOAD} × capacity: admission control never engaged"
    )
    overloaded_from = window_start + timedelta(seconds=offered.first_refusal - loop.started_at)
    overloaded_seconds = (window_end - overloaded_from).total_seconds()
    completed_overloaded = sum(1 for at in completed_at if overloaded_from <= at <= window_end)
    goodput = completed_overloaded / overloaded_seconds if overloaded_seconds > 0 else 0.0
    by_slice = Counter(
        int((at - window_start).total_seconds() // SLICE_SECONDS)
        for at in completed_at
        if window_start <= at < window_end
    )
    slices = [round(by_slice[n] / SLICE_SECONDS, 1) for n in range(int(OFFER_SECONDS // SLICE_SECONDS))]
    first_full = math.ceil((offered.first_refusal - loop.started_at) / SLICE_SECONDS)
    overloaded_slices = [by_slice[n] / SLICE_SECONDS for n in range(first_full, len(slices))]
    assert overloaded_slices, "no whole slice of the window after the first refusal"
    median_goodput = statistics.median(overloaded_slices)
    latencies = [(as_utc(r.finished_at) - as_utc(r.created_at)).total_seconds() for r in mine.values()]
    redriven = {r.order_id: r.redrives for r in rows if r.redrives}
    report = audit(system.runtime, settle=AUDIT_SETTLE)
    after = burst("capacity-after")  # the window's orders have drained, and the auditor saw them
    capacity = min(before, after, key=lambda c: c.sagas_per_second)

    figures = {
        "capacity_sagas_per_second": round(capacity.sagas_per_second, 2),
        "capacity_before_sagas_per_second": round(before.sagas_per_second, 2),
        "capacity_after_sagas_per_second": round(after.sagas_per_second, 2),
        "offered_per_second": round(rate, 2),
        "offered": len(accepted) + offered.refused,
        "accepted": len(accepted),
        "refused": offered.refused,
        "overloaded_seconds": round(overloaded_seconds, 1),
        "goodput_sagas_per_second": round(median_goodput, 2),
        "goodput_over_capacity": round(median_goodput / capacity.sagas_per_second, 2),
        "overloaded_mean_goodput_sagas_per_second": round(goodput, 2),
        "whole_window_goodput_sagas_per_second": round(window_goodput, 2),
        f"goodput_per_{SLICE_SECONDS:.0f}s_slice": slices,
        "drain_seconds": round(drain, 1),
        "p50_seconds": round(percentile(latencies, 50), 2) if latencies else None,
        "p99_seconds": round(percentile(latencies, 99), 2) if latencies else None,
        "redriven_sagas": len(redriven),
        "median_refusal_ms": round(1000 * statistics.median(offered.refusal_seconds), 2)
        if offered.refusal_seconds
        else None,
        "median_placement_ms": round(1000 * statistics.median(offered.placement_seconds), 2)
        if offered.placement_seconds
        else None,
        "offering_behind_schedule_seconds": round(offered.behind, 2),
    }
    print(f"\n[overload {broker.kind}+postgresql, {saga_mode}] " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"  outcomes {dict(outcomes)}; auditor: {report.summary()}")
    for key, value in figures.items():
        record_property(key, value)

    assert len(mine) == len(accepted), f"{len(accepted) - len(mine)} admitted order(s) not in the database"
    assert overloaded_seconds >= OVERLOADED_SHARE * OFFER_SECONDS, (
        f"the first refusal came {OFFER_SECONDS - overloaded_seconds:.1f}s into the {OFFER_SECONDS:.0f}s window"
    )
    assert outcomes == Counter({"COMPLETED": len(accepted)}), f"every tok_ok order completes: {dict(outcomes)}"
    assert report.clean, f"auditor: {report.summary()}\n" + "\n".join(report.violations[:40])
    assert median_goodput >= GOODPUT_FLOOR * capacity.sagas_per_second, (
        f"goodput {median_goodput:.2f}/s (median slice) under {GOODPUT_FLOOR} × capacity "
        f"{capacity.sagas_per_second:.2f}/s (bursts before and after the window: {before.sagas_per_second:.2f}/s, "
        f"{after.sagas_per_second:.2f}/s); slices {slices}"
    )
    assert len(redriven) <= REDRIVE_LIMIT, f"the sweeper re-drove {len(redriven)} sagas: {redriven}"
