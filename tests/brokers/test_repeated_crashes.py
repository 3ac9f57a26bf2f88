"""Repeated crashes with real processes: the four service workers and ``celery beat`` as
separate processes on Redis or RabbitMQ with PostgreSQL, orders placed from this process
while the test SIGKILLs one worker after another.

For about ``CRASH_SECONDS`` (``make soak``: ``SOAK_SECONDS``), every 2 to 5 s (at random),
one worker picked at random (order, inventory, payment or shipping) has its whole process
group SIGKILLed — main process and pool children, nothing acknowledged, no warm shutdown —
and is started again at once, so a worker may also die while it is still starting. The
seed of the schedule is printed (``CRASH_SEED`` replays one). Orders are placed meanwhile,
and only meanwhile, at a multiple of the capacity measured at the start, through admission
control: an order it still refuses when the crash phase ends is not placed, so the work
left after the last kill is bounded by admission control, not by how slow the run was.

RabbitMQ gives a dead worker's unacknowledged messages back as soon as its connection
drops. Redis keeps them in kombu's unacked hash until the visibility timeout (30 s here)
has passed: by then the saga sweeper has re-driven those sagas from their recorded state.

Once every worker answers again, the run must end as after one crash
(``tests/brokers/test_faults.py``: ``settle_and_check``): every order terminal as its
input predicts, the auditor clean, the gateway's ledger with no capture or refund twice,
no dead letter, no process dead. And, from the gateway's own ledger, no authorization
left open on a cancelled order: each one authorized was voided, or captured and refunded.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from app.adapters.fake_gateway import ledger
from app.api import System
from app.domain.subscriptions import MODES
from app.services.order import orders
from config.settings import SERVICES
from tests.brokers.test_faults import (
    FAULT_LOAD,
    FAULT_VOCABULARY,
    Fault,
    Findings,
    Run,
    StartRun,
    settle_and_check,
)

# The fault runs' fixtures, used by name: their settings (deadline 8 s, sweep every 2 s,
# visibility timeout 30 s) and ``start_run`` (measures the capacity, then places orders).
from tests.brokers.test_faults import settings_overrides as settings_overrides
from tests.brokers.test_faults import start_run as start_run
from tests.brokers.test_multiprocess import Row
from tests.support.cluster import BrokerNamespace, Workers
from tests.support.load import soak_seconds

#: How long workers are killed for (``make soak``: SOAK_SECONDS).
CRASH_SECONDS = 60.0
#: A kill every this many seconds (uniformly at random between the two).
KILL_INTERVAL = (2.0, 5.0)

#: The fault runs' mix (no tok_down: its dead letter would blur what the crashes did),
#: scaled so a run can place orders for the whole crash phase at the load below.
CRASH_VOCABULARY: tuple[Row, ...] = tuple(
    Row(row.label, row.status, row.reason, row.count * 4, row.kwargs) for row in FAULT_VOCABULARY
)


def crash_seconds() -> float:
    return soak_seconds() or CRASH_SECONDS


def crash_seed() -> int:
    """``CRASH_SEED`` from the environment (to replay a run), or a fresh one."""
    raw = os.environ.get("CRASH_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


@dataclass
class Crashes:
    """What the crash phase did."""

    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    last: Fault | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0

    def summary(self) -> str:
        per_service = ", ".join(f"{s} {self.kills[s]}" for s in SERVICES)
        return f"{sum(self.kills.values())} SIGKILLs in {self.ended - self.started:.0f}s ({per_service})"


def crash_repeatedly(run: Run, workers: Workers, env: dict[str, str], seed: int) -> Crashes:
    """While the run places orders, SIGKILL a worker picked at random every KILL_INTERVAL
    seconds, each started again at once (its log goes on in the same file). The first kills take every
    service once, in a random order, so the order worker is always among the victims."""
    rng = random.Random(seed)
    first = rng.sample(SERVICES, len(SERVICES))
    crashes = Crashes(seed)
    pacing = threading.Event()  # never set: its wait is the pause between kills
    assert run.placer.stop_at is not None
    end = run.placer.stop_at
    while run.placer.error is None:
        pause = rng.uniform(*KILL_INTERVAL)
        if time.monotonic() + pause > end:
            break
        pacing.wait(pause)  # the fault schedule, not a synchronisation
        victim = first.pop() if first else rng.choice(SERVICES)
        crashes.last = run.fault()
        pid = workers.kill(victim)
        crashes.kills[victim] += 1
        log = workers.logs[victim]
        with open(log, "a") as out:
            out.write(f"----- test: SIGKILLed the process group {pid} (kill {sum(crashes.kills.values())}) -----\n")
        workers.start(victim, env, log, append=True)
    crashes.ended = time.monotonic()
    return crashes


def open_authorizations(system: System) -> list[str]:
    """Cancelled orders whose authorization the gateway still holds: authorized (ok), and
    neither voided nor captured and refunded (the gateway's ledger, not the payment rows)."""
    cancelled = set(
        system.runtime.databases["order"].query(
            lambda c: c.execute(select(orders.c.order_id).where(orders.c.status == "CANCELLED")).scalars().all()
        )
    )
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
    held = []
    for order_id in sorted(cancelled & set(done)):
        ops = done[order_id]
        if ops["authorize"] and not (ops["void"] or (ops["capture"] and ops["refund"])):
            held.append(f"{order_id}: {dict(ops)}")
    return held


@pytest.mark.brokers
@pytest.mark.timeout(360 + 3 * soak_seconds())
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
@pytest.mark.parametrize("saga_mode", MODES)
def test_repeated_sigkills_of_any_worker_lose_no_order_and_leave_no_money_held(
    broker: BrokerNamespace,
    system: System,
    workers: Workers,
    start_run: StartRun,  # noqa: F811 (the fixture imported above)
    process_env: dict[str, str],
    record_property: Any,
    saga_mode: str,
) -> None:
    seed = crash_seed()
    print(f"\nrepeated crashes: seed {seed} (CRASH_SEED={seed} replays the schedule)")
    record_property("crash_seed", seed)
    seconds = crash_seconds()
    run = start_run(CRASH_VOCABULARY, f"crashes-{broker.kind}", FAULT_LOAD, seconds, stop=True)
    findings = Findings(f"repeated crashes: random workers SIGKILLed, {broker.kind}+postgresql, {saga_mode}")

    crashes = crash_repeatedly(run, workers, process_env, seed)
    assert crashes.last is not None, "the crash phase killed no worker"
    workers.wait_ready(system.runtime.celery)
    findings.extra["seed"] = seed
    findings.extra["kills"] = crashes.summary()
    findings.extra["kills per service"] = dict(crashes.kills)
    findings.extra["workers answering again"] = f"{time.monotonic() - crashes.last.at:.1f}s after the last kill"
    assert set(crashes.kills) == set(SERVICES), f"not every worker was killed: {crashes.summary()}"
    held: list[str] = []

    def money_held(findings: Findings) -> None:
        held.extend(open_authorizations(system))
        findings.extra["authorizations left open on cancelled orders"] = len(held)

    settle_and_check(run, findings, crashes.last, record_property, money_held)
    assert not held, f"{len(held)} cancelled order(s) with money still authorized:\n" + "\n".join(held[:20])
