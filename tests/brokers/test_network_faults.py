"""Network faults between one worker and its broker or database, through a TCP fault proxy
(tests/support/faultproxy.py: Toxiproxy's faults; Debian does not package Toxiproxy), with
the machinery of test_faults.py: real worker processes and ``celery beat``, orders placed
from this process at a multiple of the capacity measured first, every outcome, the auditor
and the gateway's own ledger checked at the end (:func:`settle_and_check`).

1. Blackhole: the payment worker's broker connection (on Redis its result backend's too)
   stays open and carries nothing for BLACKHOLE_SECONDS. The connections it had stay dead
   after the heal, so the worker recovers only by noticing on its own (AMQP heartbeats and
   socket timeouts; on Redis kombu's health checks and socket timeouts) and reconnecting;
   when it noticed is reported.
2. Latency: LATENCY_MS added to every chunk each way, and DROP_RATE of the chunks stalled
   200-1000 ms (how a lost TCP segment looks to the application), on the payment
   service's database connection, for LATENCY_SECONDS: 30 s by default to stay within the
   module's budget, the issue's 60 s under ``make soak`` (SOAK_SECONDS >= 60).
3. Reset mid-transaction: while a payment step is inside its transaction (PostgreSQL says
   so: a backend of the payment worker with an open transaction), every connection of the
   payment service to PostgreSQL is reset (RST), and then one such backend is ended with
   ``pg_terminate_backend``. The step runs again; nothing is half-applied.
4. PostgreSQL restart: every process of the run (the workers, beat and this one) uses a
   private PostgreSQL instance (tests/support/postgres.py), fast-stopped and started
   again in the middle of the run.

The issue asks for each fault on Redis and RabbitMQ in both saga modes. Within the module's
budget (about 12 minutes) every fault runs on both brokers, and the saga mode alternates
across the broker parametrizations (one fault's Redis run in orchestration, its RabbitMQ
run in choreography, and the other way round for the next fault), so each fault, broker
and mode is covered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import text

from app.api import System
from app.bootstrap import SERVICE_MODULES
from app.domain.states import StepOutcome
from app.persistence.db import Database, StepRecord, UnitOfWork, make_engine
from tests.brokers.test_faults import (
    FAULT_LOAD,
    FAULT_SETTINGS,
    FAULT_VOCABULARY,
    PLACE_LOAD,
    Findings,
    StartRun,
    placing_runs,
    settle_and_check,
)
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, log_text, pg_admin, postgres_database, unique_name
from tests.support.faultproxy import FaultProxy
from tests.support.load import soak_seconds
from tests.support.postgres import PrivatePostgres, private_postgres

#: How long the payment worker's broker connection carries nothing (a fault duration).
BLACKHOLE_SECONDS = 30.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(FAULT_SETTINGS)


def via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (user and password kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


@pytest.fixture
def start_run(system: System, beat: Workers) -> Iterator[StartRun]:
    """test_faults.py's: a run's orders placed in the background, stopped at teardown."""
    with placing_runs(system, beat) as start:
        yield start


# --- 1. blackhole -------------------------------------------------------------------


@pytest.fixture
def broker_proxy(broker: BrokerNamespace) -> Iterator[FaultProxy]:
    with FaultProxy(*upstream(broker.url)) as proxy:
        yield proxy


#: What a worker logs when it gives up on a broker connection (Celery's consumer; kombu's
#: Redis health checks).
NOTICES = ("Connection to broker lost", "dropping stale connection", "Couldn't ack")


def first_notice(workers: Workers, name: str, since: datetime) -> float | None:
    """Seconds from ``since`` to the first line of the worker's log saying it found its
    broker connection dead (None: none since then)."""
    for line in log_text(workers.logs[name]).splitlines():
        if any(notice in line for notice in NOTICES):
            try:
                at = datetime.fromisoformat(json.loads(line)["time"])
            except (ValueError, KeyError):
                continue
            if at >= since:
                return (at - since).total_seconds()
    return None


@pytest.mark.brokers
@pytest.mark.timeout(300 + 3 * soak_seconds())
@pytest.mark.parametrize(
    ("broker", "saga_mode"), [("redis", "orchestration"), ("rabbitmq", "choreography")], indirect=["broker"]
)
def test_blackholed_broker_connection_is_noticed_and_loses_nothing(
    broker: BrokerNamespace,
    broker_proxy: FaultProxy,
    service_env: dict[str, dict[str, str]],
    system: System,
    workers: Workers,
    start_run: StartRun,
    record_property: Any,
    saga_mode: str,
) -> None:
    run = start_run(FAULT_VOCABULARY, f"blackhole-{broker.kind}", FAULT_LOAD)
    findings = Findings(f"blackhole: payment worker's {broker.kind} connection, {BLACKHOLE_SECONDS:.0f}s, {saga_mode}")

    run.wait_terminal_at_least(len(run.placer.plan) // 3)
    struck = run.fault()
    broker_proxy.blackhole()
    try:
        # a fault duration, not a synchronisation: the connection is silent this long
        wait_until(
            lambda: time.monotonic() - struck.at >= BLACKHOLE_SECONDS,
            timeout=BLACKHOLE_SECONDS + 30,
            interval=0.2,
            what="the blackhole's duration",
        )
    finally:
        broker_proxy.pass_through()
    healed = time.monotonic()
    findings.extra["blackhole"] = (
        f"{healed - struck.at:.1f}s; {broker_proxy.stats.swallowed_bytes} bytes swallowed, "
        f"{broker_proxy.stats.accepted} connection(s) accepted by the proxy so far"
    )

    def noticed(findings: Findings) -> None:
        seconds = first_notice(workers, "payment", struck.wall)
        findings.extra["payment worker noticed the dead connection"] = (
            "never" if seconds is None else f"{seconds:.1f}s after the blackhole began"
        )
        findings.extra["all terminal after the heal"] = f"{time.monotonic() - healed:.1f}s"

    settle_and_check(run, findings, struck, record_property, noticed)
    # The connections it had stay dead after the heal: a worker that never noticed would
    # never have finished its sagas; this says how it noticed.
    # noticed while the connection was still silent: the checks ran, nothing held them up
    seconds = first_notice(workers, "payment", struck.wall)
    assert seconds is not None, "the payment worker never noticed"
    assert seconds < BLACKHOLE_SECONDS, f"noticed only {seconds:.1f}s after the blackhole began, after it ended"


@pytest.fixture
def service_env(request: pytest.FixtureRequest, broker: BrokerNamespace, database: str) -> dict[str, dict[str, str]]:
    """The payment worker's broker URL, or its database URL, through the test's proxy."""
    env: dict[str, str] = {}
    if "broker_proxy" in request.fixturenames:
        proxy: FaultProxy = request.getfixturevalue("broker_proxy")
        env["CHECKOUT_BROKER_URL"] = via(broker.url, proxy.port)
    if "db_proxy" in request.fixturenames:
        proxy = request.getfixturevalue("db_proxy")
        env["CHECKOUT_PAYMENT_DATABASE_URL"] = f"{via(database, proxy.port)}?application_name={PAYMENT_APPLICATION}"
    return {"payment": env}


# --- 2. latency ----------------------------------------------------------------------

LATENCY_MS = 200
DROP_RATE = 0.05
#: How long the payment database is slow: 30 s by default (the issue's 60 s under
#: ``make soak``, SOAK_SECONDS >= 60), to keep the module within its budget.
LATENCY_SECONDS = max(30.0, min(60.0, soak_seconds()))


@pytest.mark.brokers
@pytest.mark.timeout(300 + 3 * soak_seconds())
@pytest.mark.parametrize(
    ("broker", "saga_mode"), [("redis", "choreography"), ("rabbitmq", "orchestration")], indirect=["broker"]
)
def test_slow_lossy_database_connection_delays_but_loses_nothing(
    broker: BrokerNamespace,
    db_proxy: FaultProxy,
    service_env: dict[str, dict[str, str]],
    system: System,
    workers: Workers,
    start_run: StartRun,
    record_property: Any,
    saga_mode: str,
) -> None:
    run = start_run(FAULT_VOCABULARY, f"latency-{broker.kind}", PLACE_LOAD)
    findings = Findings(
        f"latency: payment's PostgreSQL connection +{LATENCY_MS}ms each way, {DROP_RATE:.0%} stalled, "
        f"{LATENCY_SECONDS:.0f}s, {broker.kind}, {saga_mode}"
    )

    run.wait_terminal_at_least(len(run.placer.plan) // 5)
    slowed = run.fault()
    terminal_before = run.terminal()
    db_proxy.latency(LATENCY_MS, DROP_RATE)
    try:
        # a fault duration, not a synchronisation: the connection is slow this long
        wait_until(
            lambda: time.monotonic() - slowed.at >= LATENCY_SECONDS,
            timeout=LATENCY_SECONDS + 30,
            interval=0.2,
            what="the latency's duration",
        )
    finally:
        db_proxy.pass_through()
    findings.extra["orders finished while slow"] = run.terminal() - terminal_before
    findings.extra["chunks through the proxy (whole run) / stalled"] = (
        f"{db_proxy.stats.chunks} / {db_proxy.stats.dropped}"
    )
    settle_and_check(run, findings, slowed, record_property)
    assert db_proxy.stats.dropped > 0, "no chunk was stalled: the payment service did not use its database"


# --- 3. reset mid-transaction --------------------------------------------------------

#: How the payment worker's connections to PostgreSQL name themselves (pg_stat_activity).
PAYMENT_APPLICATION = "checkout-payment"
#: Strikes of each kind: the proxy's RST of every connection, then pg_terminate_backend.
RESETS = 3
TERMINATIONS = 2

IN_TRANSACTION = (
    "FROM pg_stat_activity WHERE application_name = %s AND xact_start IS NOT NULL "
    "AND state IN ('active', 'idle in transaction') AND pid <> pg_backend_pid()"
)


@pytest.fixture
def db_proxy(database: str) -> Iterator[FaultProxy]:
    with FaultProxy(*upstream(database)) as proxy:
        yield proxy


def in_transaction_now() -> int:
    """Backends of the payment worker inside a transaction right now."""
    with pg_admin() as conn:
        row = conn.execute(f"SELECT count(*) {IN_TRANSACTION}", (PAYMENT_APPLICATION,)).fetchone()
    return int(row[0]) if row else 0


def terminate_in_transaction() -> int:
    """``pg_terminate_backend`` every payment backend inside a transaction; how many."""
    with pg_admin() as conn:
        rows = conn.execute(f"SELECT pg_terminate_backend(pid) {IN_TRANSACTION}", (PAYMENT_APPLICATION,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


def transactions_run_again(workers: Workers, name: str) -> int:
    """Transactions the worker ran again, or steps it retried, after losing its connection."""
    text = log_text(workers.logs[name])
    return text.count("transaction run again after a lost connection") + text.count("payment_unavailable")


@pytest.mark.brokers
@pytest.mark.timeout(300 + 3 * soak_seconds())
@pytest.mark.parametrize(
    ("broker", "saga_mode"), [("redis", "choreography"), ("rabbitmq", "orchestration")], indirect=["broker"]
)
def test_database_connection_reset_mid_transaction_half_applies_nothing(
    broker: BrokerNamespace,
    db_proxy: FaultProxy,
    service_env: dict[str, dict[str, str]],
    system: System,
    workers: Workers,
    start_run: StartRun,
    record_property: Any,
    saga_mode: str,
) -> None:
    run = start_run(FAULT_VOCABULARY, f"reset-{broker.kind}", FAULT_LOAD)
    findings = Findings(f"reset mid-transaction: payment's PostgreSQL connections, {broker.kind}, {saga_mode}")

    run.wait_terminal_at_least(len(run.placer.plan) // 4)
    first = run.fault()
    caught = 0
    for n in range(RESETS):
        run.wait_terminal_at_least(len(run.placer.plan) * (n + 1) // (2 * RESETS))
        caught += wait_until(in_transaction_now, timeout=60, interval=0.01, what="a payment transaction in flight")
        db_proxy.reset()
    terminated = 0
    for _ in range(TERMINATIONS):
        terminated += wait_until(
            terminate_in_transaction, timeout=60, interval=0.01, what="a payment transaction to terminate"
        )
    findings.extra["strikes"] = (
        f"{RESETS} RST(s) of every payment connection ({db_proxy.stats.resets} connections reset, "
        f"{caught} seen in a transaction just before), {terminated} backend(s) in a transaction terminated"
    )
    settle_and_check(run, findings, first, record_property)
    rerun = transactions_run_again(workers, "payment")
    print(f"  payment transactions run again / steps retried after a lost connection: {rerun}")
    assert rerun > 0, "no payment transaction was run again: the strikes missed every transaction"


@pytest.mark.brokers
@pytest.mark.timeout(60)
def test_a_transaction_whose_connection_dies_before_the_commit_is_run_again(database: str) -> None:
    """Database.run: a connection lost inside the transaction (here the backend ends itself)
    left nothing behind, so the work runs again on a new connection and commits once."""
    engine = make_engine(database)
    try:
        module = SERVICE_MODULES["payment"]
        db = Database("payment", engine, module.metadata, module.tables)
        db.create_schema()
        runs: list[int] = []

        def work(uow: UnitOfWork) -> str:
            runs.append(1)
            uow.record_step("o-1", "payment.authorize", StepRecord(StepOutcome.DONE))
            if len(runs) == 1:
                uow.conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            return "committed"

        assert db.run(work) == "committed"
        assert len(runs) == 2
        assert db.recorded_steps("o-1") == {"payment.authorize"}
    finally:
        engine.dispose()


# --- 4. PostgreSQL restart -----------------------------------------------------------


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database: on the private PostgreSQL when the test restarts one, otherwise
    on the shared server (as everywhere else)."""
    if "private_pg" in request.fixturenames:
        server: PrivatePostgres = request.getfixturevalue("private_pg")
        yield server.create_database(unique_name())
        return
    with postgres_database() as url:
        yield url


@pytest.mark.brokers
@pytest.mark.timeout(300 + 3 * soak_seconds())
@pytest.mark.parametrize(
    ("broker", "saga_mode"), [("redis", "orchestration"), ("rabbitmq", "choreography")], indirect=["broker"]
)
def test_postgresql_restart_mid_run_loses_no_order(
    broker: BrokerNamespace,
    private_pg: PrivatePostgres,
    system: System,
    workers: Workers,
    start_run: StartRun,
    record_property: Any,
    saga_mode: str,
) -> None:
    run = start_run(FAULT_VOCABULARY, f"pg-restart-{broker.kind}", FAULT_LOAD)
    findings = Findings(f"PostgreSQL restart (fast stop, start), {broker.kind}, {saga_mode}")

    run.wait_terminal_at_least(len(run.placer.plan) // 3)
    failures_before = len(run.placer.failures)
    stopped = run.fault()
    private_pg.restart()
    findings.extra["PostgreSQL down"] = f"{time.monotonic() - stopped.at:.1f}s (fast stop -> answering again)"

    def placements(findings: Findings) -> None:
        findings.extra["placement attempts failed around the restart"] = len(run.placer.failures) - failures_before

    settle_and_check(run, findings, stopped, record_property, placements)
