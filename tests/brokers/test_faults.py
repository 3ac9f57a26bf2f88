"""Faults with real processes: the four service workers and ``celery beat`` (the saga
sweeper) as separate processes on Redis or RabbitMQ, PostgreSQL, orders placed from this
process by a background thread while the fault is injected from the test itself.

1. Worker crash: up to 300 orders; once about a third are terminal the payment worker's whole
   process group is SIGKILLed (nothing acknowledged, no warm shutdown) and started again.
   RabbitMQ gives its unacknowledged messages back as soon as the connection drops; Redis
   only after the visibility timeout, so there the saga sweeper re-drives what was lost.
2. Lost messages: up to 150 orders; service queues are purged mid-run, one after the other, each
   while it holds a backlog (RabbitMQ: shipping, payment, order; Redis: payment, order — see
   ``PURGES``): RabbitMQ's queue.purge, or on Redis a DEL of the queue's lists under the
   namespace prefix. A step's queue, which its worker may keep empty on a fast machine, gets
   its backlog by stalling that worker (SIGSTOP, as a long pause of its host would) until
   the messages wait; the order queue, the bottleneck, has one anyway. Only the saga sweeper
   can bring those sagas to an end.
3. Broker restart: up to 300 orders; RabbitMQ's app is stopped and started again, or Redis is shut
   down and started again (it keeps nothing on disk: every queued message and result is
   lost). Placement goes on meanwhile (a failed placement is retried with its idempotency
   key); the workers reconnect on their own; the outbox and saga sweepers recover the rest.
   The broker is always running again when the test ends, whatever happened.

Each test checks that every order ends as its input predicts, that the auditor is clean,
that the gateway's own ledger shows no capture or refund twice, that no dead letter was
left and no process died, and prints what it saw: orders placed and terminal, dead letters,
duplicates absorbed (repeated deliveries of a message id, from the workers' logs, and
sweeper re-drives) and the recovery time. Every process runs with ``FAULT_SETTINGS``
(deadline 8 s, sweep every 2 s, visibility timeout 30 s), so recovery takes seconds.

Each run first measures the system's capacity with a burst (tests/support/load.py) and
places its orders at a multiple of it, through admission control, for about
``PLACE_SECONDS`` (``make soak``: ``SOAK_SECONDS``): the same load, and the same length of
run, on a fast machine as on a slow or busy one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.adapters.fake_gateway import ledger
from app.api import System, admit_and_place, validate_order
from app.domain.errors import Busy
from app.domain.subscriptions import MODES, subscriptions
from app.operations.audit import audit
from app.operations.dlq import DeadLetterOps
from app.persistence.db import as_utc
from app.services.order import TERMINAL, orders
from config.settings import SERVICES
from tests.brokers.test_multiprocess import (
    AUDIT_SETTLE,
    VOCABULARY,
    Placed,
    Row,
    assert_outcomes,
    order_plan,
    wait_all_terminal,
)
from tests.conftest import wait_until
from tests.support.cluster import (
    BrokerNamespace,
    WaitTimeout,
    Workers,
    broker_outage,
    brokers_up,
    log_text,
    rabbitmqctl,
    redis_client,
    start_rabbitmq_app,
    start_redis,
)
from tests.support.load import Capacity, measure_capacity, run_orders, soak_seconds

#: Every process of these tests runs with these (the test process's Settings too): a
#: short deadline and sweep interval so the sweeper recovers a lost saga in seconds, and a
#: visibility timeout above the deadline, every retry delay and the publish retries (checked
#: at start-up).
FAULT_SETTINGS: dict[str, Any] = {
    "visibility_timeout_seconds": 30,
    "saga_deadline_seconds": 8,
    "saga_give_up_seconds": 120,
    "sweep_interval_seconds": 2,
    "publish_retry_seconds": 20,
    # queued work past this is refused at the door: well below the deadline
    "admission_target_seconds": 3,
    "admission_min_in_flight": 30,
    "admission_window_seconds": 5,
    "admission_refresh_seconds": 0.2,
}

#: No tok_down: its ~5 s of retries and its dead letter would blur what the fault did.
FAULT_VOCABULARY: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, count, row.kwargs)
    for row, count in zip(VOCABULARY, (240, 18, 15, 0, 12, 15), strict=True)
    if count
)

LOST_VOCABULARY: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, count, row.kwargs)
    for row, count in zip(VOCABULARY, (120, 9, 8, 0, 6, 7), strict=True)
    if count
)
#: At least this many orders in any run, however slow the machine.
MIN_ORDERS = 90

#: Every rate is a multiple of the capacity measured at the start of the same test (a burst
#: of tok_ok orders; tests/support/load.py), so the load means the same on a fast machine and
#: on a slow or busy one. Placements go through admission control as a caller's would: one
#: refused (app.Busy) is placed again after its retry_after, with the same idempotency key.
#:
#: By default, about what the four workers finish, so a saga is not overdue just because it
#: queued behind the others.
PLACE_LOAD = 0.8
#: The crash and restart runs place faster than the workers finish, so work is queued and in
#: flight everywhere when the fault strikes.
FAULT_LOAD = 1.5
#: A run places orders for about this long at its rate (between MIN_ORDERS and its
#: vocabulary's size: 300 orders, or 150 in the lost-message runs), so a run takes the same
#: time on a fast machine as on a slow or busy one; ``make soak`` sets SOAK_SECONDS for
#: longer runs.
PLACE_SECONDS = 12.0
#: Longest pause after a refusal before placing the same order again.
BUSY_PAUSE_CAP = 1.0
#: A placement that fails (broker or database away) is tried again for this long.
PLACE_RETRY_TIMEOUT = 60.0
#: No single placement attempt may take longer: with the broker away it must fail (or
#: succeed, leaving the event to the outbox sweep) quickly, not hang.
PLACE_HANG_LIMIT = 10.0

TERMINAL_TIMEOUT = 150.0
#: How long the broker stays down in the restart tests (a fault duration, not a wait).
OUTAGE_SECONDS = 3.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(FAULT_SETTINGS)


# --- placing orders ---------------------------------------------------------------------


class Placer(threading.Thread):
    """Places the plan's orders at ``rate`` per second, each with an idempotency key, so a
    placement that failed (or seemed to) is simply tried again until it goes through. With
    ``stop_at`` (a ``time.monotonic()``), it places nothing more from then on: the rest of
    the plan, and an order refused as busy and not yet placed again, are left out."""

    def __init__(
        self,
        system: System,
        plan: list[tuple[Row, dict[str, Any]]],
        customer: str,
        rate: float,
        stop_at: float | None = None,
    ) -> None:
        super().__init__(name="placer", daemon=True)
        self.system = system
        self.plan = plan
        self.customer = customer
        self.rate = rate
        self.stop_at = stop_at
        self.stopped = False  # stop_at came before the end of the plan
        self.placed: list[Placed] = []
        self.failures: list[str] = []
        self.refused = 0  # placements refused by admission control (placed again after a pause)
        self.slowest = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            started = time.monotonic()
            for n, (row, args) in enumerate(self.plan):
                # pacing, not synchronisation: the n-th order goes out at n / rate seconds
                if self._halt.wait(max(0.0, started + n / self.rate - time.monotonic())):
                    return
                key = f"{self.customer}-{n}"
                request = validate_order(key, idempotency_key=key, **args)
                order_id = None if self._past_stop() else self._place(request)
                if order_id is None:
                    self.stopped = True
                    return
                self.placed.append(Placed(order_id, row, args["items"]))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _place(self, request: Any) -> str | None:
        """The order's id once placed; None if it was refused as busy until ``stop_at``."""
        deadline = time.monotonic() + PLACE_RETRY_TIMEOUT
        while True:
            began = time.monotonic()
            try:
                order_id = admit_and_place(self.system.runtime, request)
            except Busy as exc:  # over capacity: nothing written; the same order again, later
                self.refused += 1
                if self._halt.wait(min(exc.retry_after, BUSY_PAUSE_CAP)):
                    raise
                if self._past_stop():
                    return None
                continue
            except Exception as exc:
                self.failures.append(f"{request.idempotency_key}: {exc!r}"[:300])
                if time.monotonic() >= deadline or self._halt.wait(0.2):
                    raise
                continue
            self.slowest = max(self.slowest, time.monotonic() - began)
            return order_id

    def _past_stop(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    def halt(self) -> None:
        self._halt.set()

    def stack(self) -> str:
        """Where the placing thread is now (a placement that hangs shows where)."""
        frame = sys._current_frames().get(self.ident or -1)
        return "".join(traceback.format_stack(frame)[-12:]) if frame is not None else "(not running)"

    def finish(self, timeout: float) -> list[Placed]:
        """Wait until every order is placed; fail with what went wrong otherwise."""
        wait_until(
            lambda: not self.is_alive(),
            timeout=timeout,
            interval=0.1,
            what=f"the placing thread ({len(self.placed)}/{len(self.plan)} placed)",
            diagnostics=lambda: f"last failures: {self.failures[-5:]}\nwhere it is:\n{self.stack()}",
        )
        if self.error is not None:
            raise AssertionError(f"placing failed after {len(self.placed)} orders: {self.error!r}") from self.error
        assert self.stopped or len(self.placed) == len(self.plan), f"placed {len(self.placed)} of {len(self.plan)}"
        return self.placed


@dataclass(frozen=True)
class Fault:
    """When a fault struck, and which orders were in flight then."""

    at: float  # time.monotonic()
    wall: datetime
    open_orders: frozenset[str]


@dataclass
class Run:
    """A fault run: the capacity measured before it, the orders' placing thread (stopped by
    the ``start_run`` fixture) and the worker group."""

    system: System
    workers: Workers
    placer: Placer
    capacity: Capacity
    started: float = field(default_factory=time.monotonic)

    def terminal(self) -> int:
        """Orders of the run that are COMPLETED or CANCELLED (every order in the database is
        ours: the run's, and the capacity burst's, all completed before the run began)."""
        query = select(func.count()).select_from(orders).where(orders.c.status.in_(TERMINAL))
        every = int(self.system.runtime.databases["order"].query(lambda c: c.execute(query).scalar_one()))
        return every - self.capacity.orders

    def fault(self) -> Fault:
        """Call just before injecting a fault: the moment, and the orders not yet terminal."""
        query = select(orders.c.order_id).where(orders.c.status.not_in(TERMINAL))
        open_orders = frozenset(
            self.system.runtime.databases["order"].query(lambda c: c.execute(query).scalars().all())
        )
        return Fault(time.monotonic(), datetime.now(UTC), open_orders)

    def last_finished(self, order_ids: frozenset[str]) -> datetime | None:
        """When the last of ``order_ids`` reached COMPLETED or CANCELLED."""
        query = select(func.max(orders.c.finished_at)).where(orders.c.order_id.in_(order_ids))
        value = self.system.runtime.databases["order"].query(lambda c: c.execute(query).scalar())
        return None if value is None else as_utc(value)

    def wait_terminal_at_least(self, count: int, timeout: float = TERMINAL_TIMEOUT) -> None:
        wait_until(
            lambda: self.placer.error is not None or self.terminal() >= count,
            timeout=timeout,
            interval=0.1,
            what=f"{count} terminal orders",
            diagnostics=lambda: f"{self.terminal()} terminal, {len(self.placer.placed)} placed\n"
            + self.workers.tails(),
        )


@dataclass
class Findings:
    """What a fault run saw, printed and recorded as properties."""

    label: str
    placed: int = 0
    terminal: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    duplicate_commands: int = 0
    duplicate_events: int = 0
    redriven_sagas: int = 0
    redrives: int = 0
    placement_failures: int = 0
    slowest_placement: float = 0.0
    auditor: str = ""
    recovery_seconds: float = 0.0
    in_flight_at_fault: int = 0
    in_flight_recovery_seconds: float = 0.0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self, record_property: Callable[[str, Any], None]) -> None:
        lines = [
            f"[{self.label}]",
            f"  orders placed {self.placed}, terminal {self.terminal} {self.statuses}",
            f"  dead letters {self.dead_letters}",
            f"  duplicates absorbed (a message id delivered again, retries excluded, from the worker logs): "
            f"{self.duplicate_commands} step/compensation command(s), {self.duplicate_events} event "
            f"deliveries; {self.redriven_sagas} saga(s) re-driven by the sweeper ({self.redrives} re-drives)",
            f"  placement: {self.placement_failures} failed attempt(s) retried, slowest {self.slowest_placement:.2f}s",
            f"  auditor: {self.auditor}",
            f"  recovery: fault -> all {self.placed} terminal {self.recovery_seconds:.1f}s; the "
            f"{self.in_flight_at_fault} order(s) in flight at the fault all terminal "
            f"{self.in_flight_recovery_seconds:.1f}s after it; whole run {self.wall_seconds:.1f}s",
        ]
        lines += [f"  {key}: {value}" for key, value in self.extra.items()]
        print("\n" + "\n".join(lines))
        for key, value in vars(self).items():
            if key not in {"label", "extra"}:
                record_property(key, value)
        for key, value in self.extra.items():
            record_property(key, value)


StartRun = Callable[..., Run]


@contextmanager
def placing_runs(system: System, beat: Workers) -> Iterator[StartRun]:
    """Start placing a plan's orders in the background; every run's thread is stopped on exit."""
    runs: list[Run] = []

    def start(
        vocabulary: tuple[Row, ...],
        customer: str,
        load: float = PLACE_LOAD,
        seconds: float = PLACE_SECONDS,
        stop: bool = False,
    ) -> Run:
        """Measure the capacity, then place about ``seconds`` worth of ``vocabulary``'s mix
        at ``load`` times it; with ``stop``, place nothing after those seconds (the orders
        admission control held back are left out)."""
        try:
            capacity = measure_capacity(system, f"{customer}-capacity", diagnostics=beat.tails)
        except WaitTimeout as exc:
            pytest.fail(str(exc), pytrace=False)
        rate = load * capacity.sagas_per_second
        most = sum(row.count for row in vocabulary)
        plan = order_plan(vocabulary, orders=run_orders(rate, seconds, MIN_ORDERS, most))
        placer = Placer(system, plan, customer, rate, time.monotonic() + seconds if stop else None)
        run = Run(system, beat, placer, capacity)
        runs.append(run)
        placer.start()
        return run

    try:
        yield start
    finally:
        for run in runs:
            run.placer.halt()
            run.placer.join(timeout=PLACE_RETRY_TIMEOUT + 10)


@pytest.fixture
def start_run(system: System, beat: Workers) -> Iterator[StartRun]:
    """Start placing a plan's orders in the background; the thread is stopped at teardown."""
    with placing_runs(system, beat) as start:
        yield start


# --- what the run left behind -----------------------------------------------------------


RECEIVED = re.compile(r"Task ([\w.]+)\[([^\]]+)\] received")
RETRY = re.compile(r"Task ([\w.]+)\[([^\]]+)\] retry:")


#: Tasks that consume events (the relay's deliveries). The sweeper sends a lost saga's
#: missing deliveries, and those of each cancelled order once, again on purpose: their
#: repeats are counted apart from those of commands (saga steps, compensations, the
#: order's own moves).
EVENT_TASKS = frozenset(task for mode in MODES for tasks in subscriptions(mode).values() for task in tasks)


def duplicate_deliveries(logs: list[Path]) -> Counter[str]:
    """Per task name: deliveries of a message id beyond its first, not counting the
    deliveries its own retries cause (a retry is a new message with the same id). Each one
    is a redelivery (a dead worker's unacknowledged message, a broker restart), a saga's
    step sent again by the sweeper, or an event sent again, that the step or consumer
    absorbed."""
    received: Counter[tuple[str, str]] = Counter()
    retried: Counter[tuple[str, str]] = Counter()
    for path in logs:
        text = log_text(path)
        received.update(RECEIVED.findall(text))
        retried.update(RETRY.findall(text))
    extra: Counter[str] = Counter()
    for (task, task_id), count in received.items():
        repeats = count - 1 - retried[(task, task_id)]
        if repeats > 0:
            extra[task] += repeats
    return extra


def unacked(broker: BrokerNamespace, queue: str) -> int:
    """Messages of ``queue`` delivered to a worker and not acknowledged yet: RabbitMQ's
    count; on Redis the entries of kombu's ``unacked`` hash routed to the queue."""
    if broker.kind == "rabbitmq":
        assert broker.vhost is not None
        out = rabbitmqctl("list_queues", "-p", broker.vhost, "--no-table-headers", "name", "messages_unacknowledged")
        counts = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        return int(counts.get(queue, 0))
    client = redis_client()
    try:
        entries = client.hvals(f"{broker.namespace}:unacked")
    finally:
        client.close()
    return sum(1 for raw in entries if str(json.loads(raw)[2]).split(".", 1)[0] == queue)


def redis_queue_keys(broker: BrokerNamespace, queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in: ``<prefix>:<queue>`` and one per priority step
    (``<queue>\x06\x16<n>``), under the namespace's key prefix."""
    return [f"{broker.namespace}:{queue}"] + [f"{broker.namespace}:{queue}\x06\x16{n}" for n in (3, 6, 9)]


def ready(broker: BrokerNamespace, system: System, queue: str) -> int:
    """Messages waiting in ``queue`` (not yet delivered to a worker)."""
    if broker.kind == "redis":
        client = redis_client()
        try:
            return sum(int(client.llen(key)) for key in redis_queue_keys(broker, queue))
        finally:
            client.close()
    with system.runtime.celery.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def purge(broker: BrokerNamespace, system: System, queue: str) -> int:
    """Throw away every message waiting in ``queue``, as an operator (or a broker losing
    them) would, and return how many went. Redis: LLEN and DEL of the queue's lists in one
    transaction. RabbitMQ: AMQP queue.purge, the broker operation ``rabbitmqctl purge_queue``
    performs, which also answers with the count (the CLI does not print it)."""
    if broker.kind == "redis":
        client = redis_client()
        try:
            pipe = client.pipeline(transaction=True)
            keys = redis_queue_keys(broker, queue)
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            *lengths, _deleted = pipe.execute()
        finally:
            client.close()
        return sum(int(n) for n in lengths)
    with system.runtime.celery.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge(queue) or 0)


def redrive_counts(system: System) -> dict[str, int]:
    """Order id -> times the sweeper re-drove its saga (``order_orders.redrives``)."""
    rows = system.runtime.databases["order"].query(
        lambda c: c.execute(select(orders.c.order_id, orders.c.redrives).where(orders.c.redrives > 0)).all()
    )
    return {r.order_id: r.redrives for r in rows}


def assert_gateway_once(system: System, placed: list[Placed]) -> Counter[str]:
    """From the fake gateway's own ledger: at most one successful capture and one successful
    refund per order; a completed order captured exactly once and never refunded, a
    cancelled one never left with money taken. Returns the ok operations counted."""
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(
            select(ledger.c.reference, ledger.c.operation, func.count())
            .where(ledger.c.outcome == "ok")
            .group_by(ledger.c.reference, ledger.c.operation)
        ).all()
    )
    done: dict[str, Counter[str]] = {}
    for reference, operation, count in rows:
        done.setdefault(reference, Counter())[operation] += count
    wrong = []
    for oid, ops in done.items():
        for operation in ("capture", "refund"):
            if ops[operation] > 1:
                wrong.append(f"{oid}: {ops[operation]} successful {operation}s")
    for p in placed:
        ops = done.get(p.order_id, Counter())
        if p.row.status == "COMPLETED" and (ops["capture"], ops["refund"]) != (1, 0):
            wrong.append(
                f"{p.order_id} ({p.row.label}, should complete): {ops['capture']} capture(s), {ops['refund']} refund(s)"
            )
        if p.row.status == "CANCELLED" and ops["capture"] != ops["refund"]:
            wrong.append(
                f"{p.order_id} ({p.row.label}, should cancel): {ops['capture']} capture(s), {ops['refund']} refund(s)"
            )
    assert not wrong, f"{len(wrong)} gateway ledger problem(s):\n" + "\n".join(wrong[:20])
    return sum(done.values(), Counter())


def settle_and_check(
    run: Run,
    findings: Findings,
    fault: Fault,
    record_property: Any,
    observe: Callable[[Findings], None] | None = None,
) -> list[Placed]:
    """Wait for the placing thread and for every order to be terminal, then check outcomes,
    the auditor, the gateway's ledger, the dead letters and the processes (``observe`` adds
    to the findings once all is quiet). Every check runs and the findings are printed even
    when one fails; then the test fails with all of them."""
    system, workers = run.system, run.workers
    placed = run.placer.finish(timeout=PLACE_RETRY_TIMEOUT + TERMINAL_TIMEOUT)
    wait_all_terminal(system, [p.order_id for p in placed], workers, TERMINAL_TIMEOUT)
    now = time.monotonic()
    findings.recovery_seconds = now - fault.at
    findings.wall_seconds = now - run.started
    findings.in_flight_at_fault = len(fault.open_orders)
    last = run.last_finished(fault.open_orders) if fault.open_orders else None
    findings.in_flight_recovery_seconds = 0.0 if last is None else (last - fault.wall).total_seconds()
    findings.placed = len(placed)
    findings.terminal = run.terminal()
    findings.placement_failures = len(run.placer.failures)
    findings.extra["capacity"] = (
        f"{run.capacity.sagas_per_second:.1f} sagas/s (burst of {run.capacity.orders}); "
        f"placed at {run.placer.rate:.1f}/s"
    )
    findings.extra["placements refused as busy (placed again)"] = run.placer.refused
    findings.slowest_placement = run.placer.slowest

    problems: list[str] = []
    quiet = Workers()  # the helpers append this group's log tails: none (the fixture prints them)
    try:
        assert_outcomes(system, placed, quiet)
    except AssertionError as exc:
        problems.append(str(exc))
    report = audit(system.runtime, settle=AUDIT_SETTLE)
    findings.auditor = report.summary()
    findings.statuses = dict(sorted(report.statuses.items()))
    if not report.clean:
        problems.append(f"auditor: {report.summary()}\n" + "\n".join(report.violations[:40]))
    expected = Counter(p.row.status for p in placed) + Counter({"COMPLETED": run.capacity.orders})
    if (report.orders, report.statuses) != (len(placed) + run.capacity.orders, expected):
        problems.append(f"auditor saw {report.orders} orders {dict(report.statuses)}, expected {dict(expected)}")
    try:
        assert_gateway_once(system, placed)
    except AssertionError as exc:
        problems.append(str(exc))

    letters = DeadLetterOps(system.runtime).letters()
    findings.dead_letters = len(letters)
    if letters:
        problems.append(
            "dead letters (no tok_down order in the run): "
            + "; ".join(f"{d.task} {d.order_id}: {d.reason}" for d in letters[:10])
        )
    redrives = redrive_counts(system)
    findings.redriven_sagas = len(redrives)
    findings.redrives = sum(redrives.values())
    duplicates = duplicate_deliveries(list(workers.logs.values()))
    findings.duplicate_commands = sum(n for task, n in duplicates.items() if task not in EVENT_TASKS)
    findings.duplicate_events = sum(n for task, n in duplicates.items() if task in EVENT_TASKS)
    findings.extra["duplicates by task"] = dict(duplicates.most_common())
    if workers.exited():
        problems.append(f"process(es) died: {workers.exited()}")
    if run.placer.slowest > PLACE_HANG_LIMIT:
        problems.append(f"a placement took {run.placer.slowest:.1f}s (limit {PLACE_HANG_LIMIT:.0f}s)")

    if observe is not None:
        observe(findings)
    findings.report(record_property)
    assert not problems, f"{len(problems)} problem(s) after the fault:\n\n" + "\n\n".join(problems)
    return placed


# --- 1. worker crash --------------------------------------------------------------------


@pytest.mark.brokers
@pytest.mark.timeout(240 + 3 * soak_seconds())
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_sigkilled_payment_worker_loses_no_order_and_charges_no_one_twice(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    start_run: StartRun,
    process_env: dict[str, str],
    tmp_path: Path,
    record_property: Any,
    saga_mode: str,
) -> None:
    run = start_run(FAULT_VOCABULARY, f"crash-{broker.kind}", FAULT_LOAD)
    findings = Findings(f"worker crash: payment SIGKILLed, {broker.kind}+postgresql, {saga_mode}")

    run.wait_terminal_at_least(len(run.placer.plan) // 3)
    # ... and strike while the payment worker holds messages it has not acknowledged. On
    # RabbitMQ, which pushes messages to a consumer up to its prefetch, the worker is first
    # stopped (SIGSTOP, a long pause of its host) so that it holds some however fast it
    # keeps up: a worker keeping its queue empty holds them only between polls of the CLI.
    if broker.kind == "rabbitmq":
        os.killpg(workers.procs["payment"].pid, signal.SIGSTOP)
    in_flight = wait_until(lambda: unacked(broker, "payment"), timeout=60, interval=0.05, what="payment work in flight")
    terminal_before = run.terminal()
    killed = run.fault()
    pid = workers.kill("payment")
    log = workers.logs["payment"]
    with open(log, "a") as out:
        out.write(f"----- test: SIGKILLed the process group {pid}; starting the payment worker again -----\n")
    workers.start("payment", process_env, log, append=True)
    workers.wait_ready(system.runtime.celery)
    findings.extra["payment worker down"] = f"{time.monotonic() - killed.at:.1f}s (kill -> answering a ping again)"
    findings.extra["terminal at the kill"] = terminal_before
    findings.extra["payment messages unacknowledged at the kill"] = in_flight

    def orphans(findings: Findings) -> None:
        # Redis: what the dead worker had taken stays in kombu's unacked hash until the
        # visibility timeout has passed and a restore sweep runs (every ~100 s by default):
        # the saga sweeper finished those sagas long before. RabbitMQ requeued them at once.
        if broker.kind == "redis":
            findings.extra["payment messages still parked in kombu's unacked hash"] = unacked(broker, "payment")

    settle_and_check(run, findings, killed, record_property, orphans)


# --- 2. lost messages -------------------------------------------------------------------

#: Placed much faster than the workers finish, so queues build a backlog worth losing.
LOST_LOAD = 3.0


@dataclass(frozen=True)
class Purge:
    queue: str
    terminal: float  # purge once at least this share of the run's orders are terminal ...
    backlog: int  # ... and at least this many messages wait in the queue
    stall: bool = False  # stop the queue's worker until they do (then let it go on)


#: Per broker, the queues purged one after the other. The order queue is the bottleneck
#: (every event of every saga goes through it): it holds hundreds of messages for most of
#: the run, and is purged a third of the way through. Before that, a step's queue while it
#: has a backlog: on RabbitMQ the chord bodies (shipping.schedule, released by chord_unlock)
#: pile up, then payment.capture; on Redis the shipping worker keeps up with the burst (its
#: queue never holds a backlog worth the name), payment holds a few messages.
PURGES: dict[str, tuple[Purge, ...]] = {
    "redis": (Purge("payment", 0, 5, stall=True), Purge("order", 1 / 3, 20)),
    "rabbitmq": (Purge("shipping", 0, 5, stall=True), Purge("payment", 0, 5, stall=True), Purge("order", 1 / 3, 20)),
}


@contextmanager
def stalled(workers: Workers, service: str, stall: bool) -> Iterator[None]:
    """With ``stall``, the service's worker (its whole process group) stopped for the block
    and continued after it, whatever happened: what it had taken it finishes then, and what
    waits in its queue meanwhile stays there."""
    if not stall:
        yield
        return
    group = workers.procs[service].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def purge_backlog(broker: BrokerNamespace, system: System, step: Purge) -> int:
    """Once the step's queue holds its backlog, purge it; how many messages went (0 until
    then, or when the workers took them all first: the caller tries again)."""
    if ready(broker, system, step.queue) < step.backlog:
        return 0
    return purge(broker, system, step.queue)


@pytest.mark.brokers
@pytest.mark.timeout(240 + 3 * soak_seconds())
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_purged_queues_mid_run_are_recovered_by_the_saga_sweeper(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    start_run: StartRun,
    record_property: Any,
    saga_mode: str,
) -> None:
    """Each purge throws away what its queue holds at that moment; every order still ends as
    its input predicts, with the reason it predicts, and the sweeper re-drove the sagas that
    lost a message."""
    run = start_run(LOST_VOCABULARY, f"lost-{broker.kind}", LOST_LOAD)
    findings = Findings(
        f"lost messages: {', '.join(p.queue for p in PURGES[broker.kind])} purged, {broker.kind}, {saga_mode}"
    )

    purged: dict[str, int] = {}
    last_purge: Fault | None = None
    for step in PURGES[broker.kind]:
        run.wait_terminal_at_least(round(step.terminal * len(run.placer.plan)))
        with stalled(workers, step.queue, step.stall):
            purged[step.queue] = wait_until(
                partial(purge_backlog, broker, system, step),
                timeout=60,
                interval=0.02,
                what=f"a backlog of {step.backlog} message(s) in {step.queue} to purge",
                diagnostics=lambda: f"{run.terminal()} terminal; waiting: "
                + str({q: ready(broker, system, q) for q in SERVICES}),
            )
            last_purge = run.fault()
        findings.extra[f"purged {step.queue}"] = (
            f"{purged[step.queue]} message(s), {len(last_purge.open_orders)} orders in flight"
        )
    assert last_purge is not None

    settle_and_check(run, findings, last_purge, record_property)
    assert findings.redriven_sagas > 0, "messages were lost, yet the sweeper re-drove no saga"


# --- 3. broker restart ------------------------------------------------------------------


@pytest.fixture
def broker_back(broker: BrokerNamespace) -> Iterator[None]:
    """Whatever the test did, both brokers answer again before the namespace is removed and
    before the next test starts (torn down before ``broker``, after the test's own
    ``finally``)."""
    yield
    if not all(brokers_up().values()):
        start_redis()
        start_rabbitmq_app((broker.vhost,) if broker.vhost else ())
    assert brokers_up() == {"redis": True, "rabbitmq": True}, "a broker is still down after the restart test"


def death_notice(log: Path) -> str:
    """The last CRITICAL line of a worker's log (why it exited), briefly."""
    last = ""
    for line in log_text(log).splitlines():
        if '"level": "CRITICAL"' in line or "CRITICAL/" in line:
            try:
                last = str(json.loads(line)["message"])
            except (ValueError, KeyError):
                last = line
    return last[:200] or "no CRITICAL line in its log"


def supervise_until_answering(
    system: System, workers: Workers, env: dict[str, str], tmp_path: Path, timeout: float = 90.0
) -> dict[str, str]:
    """Until every worker answers a ping, start again any member of the group that exited
    (as a process supervisor would). Returns name -> why it died, for each restarted."""
    died: dict[str, str] = {}
    ping_errors: list[str] = []
    expected = workers.nodenames()

    def all_answer() -> bool:
        for name, code in workers.exited().items():
            log = workers.logs[name]
            died[name] = f"exit {code}: {death_notice(log)}"
            with open(log, "a") as out:
                out.write(f"----- test: {name} exited ({code}); starting it again -----\n")
            if name in workers.schedulers:
                workers.start_beat(env, log, tmp_path / f"{name}-schedule")
            else:
                workers.start(name, env, log, append=True)
        try:
            replies = system.runtime.celery.control.ping(timeout=1.0) or []
        except Exception as exc:  # this process's pooled connection died with the broker; the
            ping_errors.append(repr(exc))  # failed write marked it so, the next poll reconnects
            return False
        return expected <= {node for reply in replies for node in reply}

    wait_until(
        all_answer,
        timeout=timeout,
        interval=0.2,
        what="every worker to answer a ping",
        diagnostics=lambda: f"ping errors: {ping_errors[-3:]}\n{workers.tails()}",
    )
    return died


def connection_losses(workers: Workers) -> dict[str, int]:
    """Per worker: how many times its log says the broker connection was lost."""
    return {name: log_text(log).count("Connection to broker lost") for name, log in workers.logs.items()}


@pytest.mark.brokers
@pytest.mark.timeout(300 + 3 * soak_seconds())
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_broker_restart_mid_run_loses_no_order(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    start_run: StartRun,
    process_env: dict[str, str],
    broker_back: None,
    tmp_path: Path,
    record_property: Any,
    saga_mode: str,
) -> None:
    run = start_run(FAULT_VOCABULARY, f"restart-{broker.kind}", FAULT_LOAD)
    findings = Findings(f"broker restart: {broker.kind} stopped and started, {broker.kind}+postgresql, {saga_mode}")

    run.wait_terminal_at_least(len(run.placer.plan) // 3)
    service_workers = [name for name in workers.logs if name not in workers.schedulers]
    before = connection_losses(workers)
    failures_before = len(run.placer.failures)
    stopped = run.fault()
    vhosts = (broker.vhost,) if broker.vhost else ()
    with broker_outage(broker.kind, vhosts):
        # The broker stays down until every worker has noticed, and for at least
        # OUTAGE_SECONDS (a fault duration: how long the broker is away).
        wait_until(
            lambda: (
                all(connection_losses(workers)[name] > before[name] for name in service_workers)
                and time.monotonic() - stopped.at >= OUTAGE_SECONDS
            ),
            timeout=60,
            interval=0.1,
            what="every service worker to lose its broker connection",
            diagnostics=lambda: f"losses {connection_losses(workers)} (before {before})\n" + workers.tails(),
        )
    findings.extra["broker down"] = f"{time.monotonic() - stopped.at:.1f}s (stop -> answering again)"
    findings.extra["placement attempts failed during the outage"] = len(run.placer.failures) - failures_before
    died = supervise_until_answering(system, workers, process_env, tmp_path)
    findings.extra["processes restarted (as a supervisor would)"] = died or "none"
    findings.extra["workers answering again"] = f"{time.monotonic() - stopped.at:.1f}s after the stop"
    settle_and_check(run, findings, stopped, record_property)
