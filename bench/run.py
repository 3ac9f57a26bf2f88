"""Sagas per second: the checkout saga, in each saga mode, against a raw-Celery baseline on the same broker.

    python -m bench.run [--broker redis|rabbitmq|both] [--mode orchestration|choreography|both]
                        [--sagas N] [--rounds R] [--warmup W]

For each broker, each round measures the baseline, then the project in each selected saga mode:

* baseline — ``bench/baseline.py``: four ``celery -A bench.baseline worker -Q <queue> -c 2``
  processes; N sagas (the saga's canvas, one PostgreSQL insert per task) applied from here;
* orchestration, choreography — the four ``celery -A workers.<service> worker -Q <service> -c 2``
  processes started with ``CHECKOUT_SAGA_MODE=<mode>``; N ``tok_ok`` orders placed through
  ``System(settings)`` with ``saga_mode=<mode>`` (non-embedded, as the broker tests). The worker
  logs must show every saga's steps run by the mode's own tasks, and none of the other mode's:
  the canvas's (``order.start``, ``inventory.reserve``, ...) in orchestration, the event
  reactions (``inventory.reserve_on_placed``, ``shipping.join``, ...) in choreography.

Every measurement gets a fresh PostgreSQL database and a fresh broker namespace (Redis key
prefix or RabbitMQ vhost), from ``tests/support/cluster.py``; all of it is removed after the
measurement, also on error or Ctrl-C. W warm-up sagas run first and are not timed.

Measured: sagas/s = N / (last completion - first submission); per-saga latency p50/p95
(project: the order's ``created_at`` -> ``finished_at``; baseline: submission -> commit of the
``complete`` row); the time to submit N; messages delivered per saga (``Task ... received``
lines in the worker logs), events written per saga (project: every service's event log) and
PostgreSQL commits per saga (``pg_stat_database``, minus this process's own polling). The
report (medians over rounds, ratios mode/baseline and choreography/orchestration) goes to
``bench/REPORT.md`` and to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import baseline
from tests.support.cluster import (
    BROKERS,
    ClusterError,
    Workers,
    broker_namespace,
    database_commits,
    database_name,
    pg_admin,
    poll_until,
    postgres_database,
    rabbitmqctl,
    redis_client,
    redis_keys,
    worker_env,
)

BENCH_DIR = Path(__file__).resolve().parent
REPORT_PATH = BENCH_DIR / "REPORT.md"
PREFIX = "checkout_bench"
SERVICES: tuple[str, ...] = ("order", "inventory", "payment", "shipping")
BASKET: list[dict[str, Any]] = [{"sku": "MUG-01", "qty": 2}, {"sku": "TEE-01", "qty": 1}]
POLL_INTERVAL = 0.1
ORCHESTRATION, CHOREOGRAPHY = "orchestration", "choreography"
MODES: tuple[str, ...] = (ORCHESTRATION, CHOREOGRAPHY)
#: The tasks that drive each mode's saga: order.start and the canvas's five steps; the five event
#: reactions (README: "The saga", "Choreography").
STEP_TASKS: dict[str, tuple[str, ...]] = {
    ORCHESTRATION: (
        "order.start",
        "inventory.reserve",
        "payment.authorize",
        "shipping.schedule",
        "payment.capture",
        "order.complete",
    ),
    CHOREOGRAPHY: (
        "inventory.reserve_on_placed",
        "payment.authorize_on_placed",
        "shipping.join",
        "payment.capture_on_scheduled",
        "order.complete_on_captured",
    ),
}
#: Never delivered in choreography: no canvas, so no chord either.
CANVAS_ONLY: tuple[str, ...] = (*STEP_TASKS[ORCHESTRATION], "celery.chord_unlock")
RECEIVED = re.compile(r"Task ([\w.]+)\[[^\]]+\] received")
RETRIED = re.compile(r"Task ([\w.]+)\[[^\]]+\] retry:")


# --- progress ---------------------------------------------------------------------------


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per phase otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.prefix = ""
        self.started = time.monotonic()

    def _clock(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        return f"{elapsed // 60:02d}:{elapsed % 60:02d}"

    def phase(self, text: str) -> None:
        line = f"[{self._clock()}] {self.prefix}{text}"
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{line}")
        else:
            sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    def tick(self, text: str) -> None:
        if self.tty:
            self.phase(text)

    def done(self, text: str) -> None:
        line = f"[{self._clock()}] {self.prefix}{text}"
        sys.stderr.write(f"\r\x1b[K{line}\n" if self.tty else f"{line}\n")
        sys.stderr.flush()


# --- measurements ---------------------------------------------------------------------


@dataclass
class Measurement:
    system: str  # "baseline", or the project's saga mode: "orchestration" or "choreography"
    broker: str
    round: int
    sagas: int
    wall: float  # first submission -> last completion, seconds
    submit: float  # submitting the N sagas, seconds
    latencies: list[float]  # per saga, seconds
    startup: float  # workers started and answering a ping, seconds
    deliveries: Counter[str] = field(default_factory=Counter)  # task name -> messages received (incl. warm-up)
    retries: Counter[str] = field(default_factory=Counter)  # task name -> retries logged (incl. warm-up)
    commits: int = 0  # PostgreSQL commits in the run's database, minus our polling (incl. setup, warm-up)
    events: Counter[str] = field(default_factory=Counter)  # project: event type -> events written (incl. warm-up)
    counted: int = 0  # sagas behind deliveries and commits (N + warm-up)
    check: str = ""  # what the run's own correctness check said

    @property
    def rate(self) -> float:
        return self.sagas / self.wall

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    @property
    def messages_per_saga(self) -> float:
        return sum(self.deliveries.values()) / self.counted

    @property
    def commits_per_saga(self) -> float:
        return self.commits / self.counted


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def task_lines(logs: dict[str, Path], pattern: re.Pattern[str]) -> Counter[str]:
    """Task name -> worker log lines matching ``pattern`` (its group 1 is the task name)."""
    counts: Counter[str] = Counter()
    for path in logs.values():
        for line in path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match:
                counts[match.group(1)] += 1
    return counts


def deliveries(logs: dict[str, Path]) -> Counter[str]:
    return task_lines(logs, RECEIVED)


def check_mode(mode: str, delivered: Counter[str], counted: int) -> str:
    """Which tasks ran the sagas, from the worker logs: every step task of ``mode`` at least
    once per saga, and no task of the other mode (in choreography: nothing of a canvas)."""
    own = STEP_TASKS[mode]
    foreign = CANVAS_ONLY if mode == CHOREOGRAPHY else STEP_TASKS[CHOREOGRAPHY]
    short = {task: delivered[task] for task in own if delivered[task] < counted}
    stray = {task: delivered[task] for task in foreign if delivered[task]}
    if short or stray:
        raise ClusterError(
            f"{mode}: the worker logs do not show a {mode} run of {counted} sagas: step tasks received "
            f"fewer times than sagas {short or '-'}, tasks of the other mode received {stray or '-'}"
        )
    return f"{mode} tasks only ({', '.join(own)}: each at least once per saga)"


def settled_commits(db_url: str, own: int) -> int:
    """The database's commit count once every client has gone (statistics are flushed as
    backends exit, asynchronously): read until two reads 0.3 s apart agree."""
    name = database_name(db_url)
    last = [-1]

    def stable() -> bool:
        now = database_commits(name)
        same = now == last[0]
        last[0] = now
        return same

    poll_until(stable, timeout=10.0, interval=0.3, what=f"commit statistics of {name} to settle")
    return max(0, last[0] - own)


def wait_for(
    count: Callable[[], int], target: int, timeout: float, progress: Progress, what: str, group: Workers
) -> int:
    """Poll ``count()`` until it reaches ``target``; returns how many polls it took."""
    polls = [0]
    started = time.monotonic()

    def reached() -> bool:
        polls[0] += 1
        done = count()
        progress.tick(f"{what}: {done}/{target} done, {time.monotonic() - started:.1f}s")
        dead = group.exited()
        if dead:
            raise ClusterError(f"worker(s) exited during the run: {dead}\n{group.tails()}")
        return done >= target

    poll_until(reached, timeout=timeout, interval=POLL_INTERVAL, what=f"{target} {what}", diagnostics=group.tails)
    return polls[0]


def run_timeout(sagas: int) -> float:
    return max(120.0, sagas * 0.5)


def measure_baseline(kind: str, round_: int, sagas: int, warmup: int, logdir: Path, progress: Progress) -> Measurement:
    import psycopg

    with postgres_database(PREFIX) as db_url, broker_namespace(kind, PREFIX) as ns:
        backend = ns.url if kind == "redis" else f"db+{db_url}"
        baseline.create_schema(db_url)
        client = baseline.make_app(ns.url, backend, db_url, ns.namespace)
        env = worker_env(
            ns,
            db_url,
            {
                "BENCH_BROKER_URL": ns.url,
                "BENCH_RESULT_BACKEND": backend,
                "BENCH_DATABASE_URL": db_url,
                "BENCH_NAMESPACE": ns.namespace,
            },
        )
        own_commits = 1  # create_schema
        try:
            with Workers() as group, psycopg.connect(baseline.libpq_url(db_url), autocommit=True) as conn:
                progress.phase("baseline: starting workers")
                started = time.monotonic()
                for queue in baseline.QUEUES:
                    group.start(
                        f"bench-{queue}", env, logdir / f"baseline-{queue}.log", app="bench.baseline", queue=queue
                    )
                group.wait_ready(client)
                startup = time.monotonic() - started

                def completed() -> int:
                    row = conn.execute(f"SELECT count(*) FROM {baseline.TABLE} WHERE step = 'complete'").fetchone()
                    return int(row[0]) if row else 0

                progress.phase(f"baseline: {warmup} warm-up sagas")
                for n in range(warmup):
                    baseline.saga(client, f"warmup-{n}").apply_async()
                own_commits += wait_for(completed, warmup, run_timeout(warmup), progress, "warm-up sagas", group)

                progress.phase(f"baseline: submitting {sagas} sagas")
                submitted: dict[str, float] = {}
                first = time.time()
                for n in range(sagas):
                    saga_id = f"saga-{n}"
                    submitted[saga_id] = time.time()
                    baseline.saga(client, saga_id).apply_async()
                submit = time.time() - first
                own_commits += wait_for(completed, warmup + sagas, run_timeout(sagas), progress, "sagas", group)
                rows = conn.execute(
                    f"SELECT saga_id, extract(epoch FROM at) FROM {baseline.TABLE} "
                    "WHERE step = 'complete' AND saga_id LIKE 'saga-%'"
                ).fetchall()
                own_commits += 1
                steps = conn.execute(f"SELECT count(*) FROM {baseline.TABLE}").fetchone()
                own_commits += 1
        finally:
            client.close()
        done = {saga_id: float(at) for saga_id, at in rows}
        if set(done) != set(submitted):
            raise ClusterError(f"baseline: {len(set(submitted) - set(done))} saga(s) never completed")
        measurement = Measurement(
            system="baseline",
            broker=kind,
            round=round_,
            sagas=sagas,
            wall=max(done.values()) - first,
            submit=submit,
            latencies=[done[s] - submitted[s] for s in submitted],
            startup=startup,
            deliveries=deliveries(group.logs),
            retries=task_lines(group.logs, RETRIED),
            commits=settled_commits(db_url, own_commits),
            counted=sagas + warmup,
            check=f"{len(done)}/{sagas} complete rows, {steps[0] if steps else 0} step rows",
        )
    return measurement


def measure_project(
    kind: str, mode: str, round_: int, sagas: int, warmup: int, logdir: Path, progress: Progress
) -> Measurement:
    from sqlalchemy import event, func, select

    from app.api import System, validate_order
    from app.operations.audit import audit
    from app.services.order import TERMINAL, orders
    from config.settings import Settings

    with postgres_database(PREFIX) as db_url, broker_namespace(kind, PREFIX) as ns:
        settings = Settings(broker_url=ns.url, database_url=db_url, namespace=ns.namespace, saga_mode=mode)
        system = System(settings).start()
        try:
            rt = system.runtime
            rt.prepare()
            rt.declare_queues()
            order_db = rt.databases["order"]
            # This process's own reads (polls, audit) are not the saga's cost: count them.
            own = {"counting": False, "commits": 0}

            def count_own(*_: Any) -> None:
                if own["counting"]:
                    own["commits"] += 1

            for engine in rt.engines.values():
                event.listen(engine, "commit", count_own)

            @contextmanager
            def own_reads() -> Iterator[None]:
                own["counting"] = True
                try:
                    yield
                finally:
                    own["counting"] = False

            def event_counts() -> Counter[str]:
                """Event type -> events written, over every service's event log."""
                found: Counter[str] = Counter()
                for db in rt.databases.values():
                    log = db.tables.events
                    query = select(log.c.event_type, func.count()).group_by(log.c.event_type)

                    def by_type(conn: Any, query: Any = query) -> list[Any]:
                        return list(conn.execute(query).all())

                    for event_type, count in db.query(by_type):
                        found[str(event_type)] += int(count)
                return found

            env = worker_env(ns, db_url, {"CHECKOUT_SAGA_MODE": mode})
            with Workers() as group:
                progress.phase(f"{mode}: starting workers")
                started = time.monotonic()
                for service in SERVICES:
                    group.start(service, env, logdir / f"{mode}-{service}.log")
                group.wait_ready(rt.celery)
                startup = time.monotonic() - started

                def terminal() -> int:
                    query = select(func.count()).select_from(orders).where(orders.c.status.in_(TERMINAL))
                    return int(order_db.query(lambda c: c.execute(query).scalar()) or 0)

                progress.phase(f"{mode}: {warmup} warm-up orders")
                for n in range(warmup):
                    rt.order.place(validate_order(f"warmup-{n}", BASKET))
                with own_reads():
                    wait_for(terminal, warmup, run_timeout(warmup), progress, "warm-up orders", group)

                progress.phase(f"{mode}: placing {sagas} orders")
                first = time.time()
                for n in range(sagas):
                    rt.order.place(validate_order(f"bench-{n}", BASKET))
                submit = time.time() - first
                with own_reads():
                    wait_for(terminal, warmup + sagas, run_timeout(sagas), progress, "orders", group)
                    # With the workers still running: the auditor also waits for the last
                    # events to reach their consumers (a settled audit means a quiet system).
                    progress.phase(f"{mode}: auditing")
                    report = audit(rt, settle=30.0)
                    rows = order_db.query(
                        lambda c: c.execute(
                            select(orders.c.status, orders.c.created_at, orders.c.finished_at).where(
                                orders.c.customer_id.like("bench-%")
                            )
                        ).all()
                    )
                    events = event_counts()
            # Workers stopped; close this process's connections so the commit count settles.
            rt.close()
            commits = settled_commits(db_url, int(own["commits"]))
        finally:
            system.stop()
    completed = [r for r in rows if r.status == "COMPLETED" and r.finished_at is not None]
    if len(rows) != sagas or len(completed) != sagas:
        raise ClusterError(f"{mode}: {len(completed)} of {len(rows)} orders COMPLETED, expected {sagas}")
    if not report.clean:
        raise ClusterError(f"{mode}: auditor: {report.summary()}\n" + "\n".join(report.violations[:20]))
    delivered = deliveries(group.logs)
    ran = check_mode(mode, delivered, sagas + warmup)
    return Measurement(
        system=mode,
        broker=kind,
        round=round_,
        sagas=sagas,
        wall=max(r.finished_at.timestamp() for r in completed) - first,
        submit=submit,
        latencies=[(r.finished_at - r.created_at).total_seconds() for r in completed],
        startup=startup,
        deliveries=delivered,
        retries=task_lines(group.logs, RETRIED),
        commits=commits,
        events=events,
        counted=sagas + warmup,
        check=f"{len(completed)}/{sagas} COMPLETED, auditor {report.summary()}; {ran}",
    )


# --- cleanup, interrupts ---------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    pass


@contextmanager
def interrupts_raise_once() -> Iterator[None]:
    """SIGINT/SIGTERM raise once (so every ``finally`` runs); repeats during cleanup are
    ignored with a note, so a second Ctrl-C cannot strand a database, vhost or worker."""
    count = [0]

    def handler(signum: int, frame: FrameType | None) -> None:
        count[0] += 1
        if count[0] == 1:
            raise Interrupted(signal.Signals(signum).name)
        sys.stderr.write("\nbench: still cleaning up (workers, databases, namespaces); please wait\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def leftovers() -> list[str]:
    """Anything of ours still on the servers (there should be nothing)."""
    left: list[str] = []
    with pg_admin() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{PREFIX}_%",)).fetchall()
    left += [f"PostgreSQL database {r[0]}" for r in rows]
    keys = redis_keys(f"{PREFIX}_*")
    if keys:
        left.append(f"{len(keys)} Redis key(s) under {PREFIX}_*")
    vhosts = rabbitmqctl("list_vhosts", "--no-table-headers", "name").split()
    left += [f"RabbitMQ vhost {v}" for v in vhosts if v.startswith(f"{PREFIX}_")]
    return left


# --- the report -------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Summary:
    broker: str
    modes: list[str]  # the project's saga modes measured, in order
    runs: dict[str, list[Measurement]] = field(default_factory=dict)  # system -> one measurement per round

    @property
    def systems(self) -> list[str]:
        return ["baseline", *self.modes]

    def add(self, m: Measurement) -> None:
        self.runs.setdefault(m.system, []).append(m)

    def med(self, system: str, attr: str) -> float:
        return median([getattr(m, attr) for m in self.runs.get(system, [])])

    def ratio(self, system: str, attr: str, over: str = "baseline") -> float:
        base = self.med(over, attr)
        return self.med(system, attr) / base if base else float("nan")

    def per_task(self, system: str) -> dict[str, float]:
        """Median messages per saga, by task name."""
        runs = self.runs.get(system, [])
        names = sorted({name for m in runs for name in m.deliveries})
        return {n: median([m.deliveries[n] / m.counted for m in runs]) for n in names}

    def per_retry(self, system: str) -> dict[str, float]:
        """Median retries per saga, by task name."""
        runs = self.runs.get(system, [])
        names = sorted({name for m in runs for name in m.retries})
        return {n: median([m.retries[n] / m.counted for m in runs]) for n in names}

    def per_event(self, system: str) -> dict[str, float]:
        """Median events written per saga, by event type."""
        runs = self.runs.get(system, [])
        names = sorted({name for m in runs for name in m.events})
        return {n: median([m.events[n] / m.counted for m in runs]) for n in names}


METRICS: list[tuple[str, str, Callable[[float], str]]] = [
    ("sagas/s", "rate", lambda v: f"{v:.1f}"),
    ("latency p50, ms", "p50", lambda v: f"{v * 1000:.0f}"),
    ("latency p95, ms", "p95", lambda v: f"{v * 1000:.0f}"),
    ("submitting N, s", "submit", lambda v: f"{v:.2f}"),
    ("messages delivered / saga", "messages_per_saga", lambda v: f"{v:.1f}"),
    ("PostgreSQL commits / saga", "commits_per_saga", lambda v: f"{v:.1f}"),
]


def table(summary: Summary) -> str:
    header = ["median over rounds", *summary.systems, *(f"{mode} / baseline" for mode in summary.modes)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for label, attr, fmt in METRICS:
        cells = [label, *(fmt(summary.med(system, attr)) for system in summary.systems)]
        cells += [f"{summary.ratio(mode, attr):.2f}" for mode in summary.modes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(summary: Summary) -> str:
    """Choreography against orchestration, when both were measured."""
    if not {ORCHESTRATION, CHOREOGRAPHY} <= set(summary.modes):
        return ""
    return (
        f"Choreography / orchestration on {summary.broker}: throughput "
        f"{summary.ratio(CHOREOGRAPHY, 'rate', ORCHESTRATION):.2f} "
        f"({summary.med(CHOREOGRAPHY, 'rate'):.1f} against {summary.med(ORCHESTRATION, 'rate'):.1f} sagas/s), "
        f"p50 latency {summary.ratio(CHOREOGRAPHY, 'p50', ORCHESTRATION):.2f} "
        f"({summary.med(CHOREOGRAPHY, 'p50') * 1000:.0f} against {summary.med(ORCHESTRATION, 'p50') * 1000:.0f} ms)."
    )


def counts(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {count:.1f}" for name, count in values.items()) or "none"


def rounds_detail(summary: Summary) -> str:
    lines = []
    order = {system: n for n, system in enumerate(summary.systems)}
    runs = [m for system in summary.systems for m in summary.runs.get(system, [])]
    for m in sorted(runs, key=lambda m: (m.round, order[m.system])):
        lines.append(
            f"- round {m.round} {m.system}: {m.rate:.1f} sagas/s ({m.sagas} in {m.wall:.2f}s), "
            f"p50 {m.p50 * 1000:.0f} ms, p95 {m.p95 * 1000:.0f} ms, workers ready in {m.startup:.1f}s; {m.check}"
        )
    return "\n".join(lines)


def queued_share(summary: Summary, system: str) -> float:
    """Median over rounds of p50 latency / wall time: how much of a saga's latency is the burst."""
    return median([m.p50 / m.wall for m in summary.runs.get(system, [])])


def burst_line(summary: Summary, system: str) -> str:
    return (
        f"Latencies are measured under a burst of N submissions: the p50 saga took "
        f"{queued_share(summary, system):.0%} of the whole run's wall time (the baseline's "
        f"{queued_share(summary, 'baseline'):.0%}), so p50/p95 are mostly time spent queued behind the burst, "
        "not the cost of one saga on an idle system."
    )


def orchestration_lines(summary: Summary) -> list[str]:
    tasks = summary.per_task(ORCHESTRATION)
    record = tasks.get("order.record", 0.0)
    consumers = record + tasks.get("order.start", 0.0) + tasks.get("inventory.commit", 0.0)
    project_msgs = summary.med(ORCHESTRATION, "messages_per_saga")
    base_msgs = summary.med("baseline", "messages_per_saga")
    unlock = tasks.get("celery.chord_unlock", 0.0)
    lines = [
        f"Orchestration runs at {summary.ratio(ORCHESTRATION, 'rate'):.0%} of the raw canvas's throughput on "
        f"{summary.broker} and its p50 latency is {summary.ratio(ORCHESTRATION, 'p50'):.1f}x the baseline's; "
        "the canvas is the same, the difference is what the project does around it.",
        f"Event consumers: {project_msgs:.1f} messages per saga against {base_msgs:.1f}. "
        f"Besides the five steps, {consumers:.1f} are event consumers fed by the relay — order.start "
        f"(OrderPlaced), {record:.1f} x order.record (the order service following every inventory, payment "
        "and shipping event) and inventory.commit (OrderCompleted)"
        + (f"; {unlock:.1f} are chord_unlock polls of the database result backend." if unlock else "."),
        f"Outbox writes: {summary.med(ORCHESTRATION, 'commits_per_saga'):.1f} PostgreSQL commits per saga "
        f"against {summary.med('baseline', 'commits_per_saga'):.1f}. Each step writes its state, its step record "
        "and its event in one transaction, then the relay stamps the event published in a second one; the steps "
        "that call out (authorize, schedule, capture) first read their step record in a transaction of its "
        "own, and the fake gateway keeps its ledger in another; every consumer adds an inbox + timeline "
        "transaction, order.start a plan/dispatched pair.",
        f"Relay publishes are synchronous, after each commit, in the committing process: placing N orders "
        f"took {summary.med(ORCHESTRATION, 'submit'):.2f}s against {summary.med('baseline', 'submit'):.2f}s "
        "for N bare apply_async calls (the place is a transaction, a publish and a mark-published transaction).",
        burst_line(summary, ORCHESTRATION),
    ]
    if unlock:
        lines.append(
            "On the database result backend Celery joins a chord by polling: the first celery.chord_unlock "
            "is sent with a 1 s countdown (celery/backends/base.py fallback_chord_unlock), so every saga of "
            "the baseline and of orchestration waits ~1 s at the chord (a delay, not work); on Redis a counter "
            "joins it at once. Choreography has no chord."
        )
    return lines


def choreography_lines(summary: Summary) -> list[str]:
    from app.domain.subscriptions import consumers_of

    tasks = summary.per_task(CHOREOGRAPHY)
    events = summary.per_event(CHOREOGRAPHY)
    retried = summary.per_retry(CHOREOGRAPHY)
    msgs = summary.med(CHOREOGRAPHY, "messages_per_saga")
    commits = summary.med(CHOREOGRAPHY, "commits_per_saga")
    fed = {event_type: consumers_of(event_type, CHOREOGRAPHY) for event_type in events}
    expected = sum(count * len(fed[event_type]) for event_type, count in events.items())
    fan_out = "; ".join(
        f"{event_type} ({count:.1f}) -> {', '.join(fed[event_type]) or 'no consumer'}"
        for event_type, count in events.items()
    )
    not_fed = sorted(task for task in tasks if not any(task in consumers for consumers in fed.values()))
    joins = [event_type for event_type, consumers in fed.items() if "shipping.join" in consumers]
    join = tasks.get("shipping.join", 0.0)
    placed = consumers_of("OrderPlaced", CHOREOGRAPHY)
    orchestrated = ORCHESTRATION in summary.modes
    orch_tasks = summary.per_task(ORCHESTRATION) if orchestrated else {}
    unlock = orch_tasks.get("celery.chord_unlock", 0.0)
    base_unlock = summary.per_task("baseline").get("celery.chord_unlock", 0.0)
    database_results = summary.broker == "rabbitmq"

    messages = (
        f"Event consumers: {msgs:.1f} messages per saga against {summary.med('baseline', 'messages_per_saga'):.1f}"
        + (f" (orchestration {summary.med(ORCHESTRATION, 'messages_per_saga'):.1f})" if orchestrated else "")
        + (", every one an event delivery" if not not_fed else f"; not event deliveries: {', '.join(not_fed)}")
        + f". {sum(events.values()):.1f} events per saga, each sent by the relay to every consumer of its type "
        f"(CHOREOGRAPHY_SUBSCRIPTIONS): {fan_out}. That is {expected:.1f} deliveries per saga; the logs show "
        f"{msgs:.1f}"
        + (f" (retries logged per saga: {counts(retried)})" if retried else ", and no retry")
        + f". The five steps are among them, shipping.join {join:.1f} times: it hears {', '.join(joins)} and "
        f"books the shipment on the last of them. order.record follows {tasks.get('order.record', 0.0):.1f} "
        f"events and inventory.commit {tasks.get('inventory.commit', 0.0):.1f}"
        + (
            f", as orchestration's {orch_tasks.get('order.record', 0.0):.1f} and "
            f"{orch_tasks.get('inventory.commit', 0.0):.1f}. Against orchestration: no order.start "
            f"({orch_tasks.get('order.start', 0.0):.1f})"
            + (f" and no chord_unlock ({unlock:.1f})" if unlock else "")
            + f", and shipping.join's {join:.1f} deliveries where the canvas has "
            f"{orch_tasks.get('shipping.schedule', 0.0):.1f} shipping.schedule."
            if orchestrated
            else "."
        )
    )
    writes = (
        f"Outbox writes: {commits:.1f} PostgreSQL commits per saga against "
        f"{summary.med('baseline', 'commits_per_saga'):.1f}"
        + (f" (orchestration {summary.med(ORCHESTRATION, 'commits_per_saga'):.1f})" if orchestrated else "")
        + ". The steps write as in orchestration — state, step record and event in one transaction, then the "
        "relay's mark-published in a second; authorize, schedule and capture first read their step record, and "
        "the fake gateway keeps its ledger in another — and so do the consumers (order.record one inbox + "
        "timeline transaction per event, inventory.commit a write and a mark-published). The hand-off differs: "
        f"no order.start plan/dispatched pair (2 commits per saga), but each of the {join:.1f} shipping.join "
        "deliveries notes what it heard in shipping_readiness, in a transaction of its own"
    )
    if orchestrated and database_results:
        diff = commits - summary.med(ORCHESTRATION, "commits_per_saga")
        writes += (
            f"; and no result is stored — the event reactions keep none (ignore_result), where orchestration's "
            "canvas stores each step's result and polls its chord in the run's database (the database result "
            f"backend). Net: {diff:+.1f} commits per saga against orchestration, so its results and chord polls "
            f"come to about {join - 2 - diff:.1f}."
        )
    elif orchestrated:
        diff = commits - summary.med(ORCHESTRATION, "commits_per_saga")
        writes += (
            f": {join - 2:+.1f} commits per saga against orchestration on paper, {diff:+.1f} measured "
            "(the results of the canvas are in Redis, not in PostgreSQL)."
        )
    else:
        writes += "."
    lines = [
        f"Choreography runs at {summary.ratio(CHOREOGRAPHY, 'rate'):.0%} of the raw canvas's throughput on "
        f"{summary.broker} and its p50 latency is {summary.ratio(CHOREOGRAPHY, 'p50'):.1f}x the baseline's. "
        "There is no canvas: each step is started by the event of the step before, which the relay publishes "
        "after that step's transaction commits; where the canvas joins reserve and authorize in a chord, "
        "shipping joins its inputs in its own table (shipping_readiness).",
        messages,
        writes,
        f"Relay publishes are synchronous, after each commit, in the committing process: placing N orders "
        f"took {summary.med(CHOREOGRAPHY, 'submit'):.2f}s against {summary.med('baseline', 'submit'):.2f}s "
        "for N bare apply_async calls"
        + (f" and {summary.med(ORCHESTRATION, 'submit'):.2f}s in orchestration" if orchestrated else "")
        + f": the place sends OrderPlaced to its {len(placed)} consumers ({', '.join(placed)}), one message each"
        + (", where orchestration sends one (order.start)." if orchestrated else "."),
    ]
    if base_unlock or unlock:
        polled = [f"the baseline's ({base_unlock:.1f} celery.chord_unlock per saga)"] if base_unlock else []
        polled += [f"orchestration's ({unlock:.1f})"] if unlock else []
        lines.append(
            f"No chord to poll: on the database result backend {' and '.join(polled)} sagas wait ~1 s at the "
            "chord; choreography's join is a row of shipping_readiness updated by each shipping.join delivery, so "
            "no saga waits for a poll."
        )
    lines.append(burst_line(summary, CHOREOGRAPHY))
    return lines


def interpretation(summary: Summary, mode: str) -> list[str]:
    return orchestration_lines(summary) if mode == ORCHESTRATION else choreography_lines(summary)


def versions() -> dict[str, str]:
    import celery
    import kombu

    found = {
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
    }
    try:
        with pg_admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql"] = str(row[0]).split()[0] if row else "?"
    except Exception as exc:  # the report still says what it could not read
        found["postgresql"] = f"? ({exc.__class__.__name__})"
    try:
        client = redis_client()
        try:
            found["redis"] = str(client.info("server").get("redis_version", "?"))
        finally:
            client.close()
    except Exception as exc:
        found["redis"] = f"? ({exc.__class__.__name__})"
    try:
        found["rabbitmq"] = rabbitmqctl("version").strip() or "?"
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        found["rabbitmq"] = f"? ({exc.__class__.__name__})"
    return found


def render(
    summaries: list[Summary], args: argparse.Namespace, machine: dict[str, str], load: tuple[str, str], took: float
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    modes = selected_modes(args.mode)
    out = [
        "# Benchmark: the checkout saga, " + " and ".join(modes) + ", against a raw-Celery baseline",
        "",
        f"Generated {now} by `python -m bench.run --broker {args.broker} --mode {args.mode} --sagas {args.sagas} "
        f"--rounds {args.rounds} --warmup {args.warmup}` in {took:.0f}s. Regenerate with `make bench`.",
        "",
        f"Machine: nproc {machine['nproc']}, Python {machine['python']}, Celery {machine['celery']} "
        f"(kombu {machine['kombu']}), PostgreSQL {machine['postgresql']}, Redis {machine['redis']}, "
        f"RabbitMQ {machine['rabbitmq']}; load average {load[0]} at the start, {load[1]} at the end.",
        "",
        f"Parameters: N = {args.sagas} sagas per measurement after {args.warmup} untimed warm-up sagas; "
        f"{args.rounds} rounds per broker, in each round the baseline, then the project in "
        + (f"each saga mode ({', '.join(modes)})" if len(modes) > 1 else f"{modes[0]} mode")
        + "; every measurement on a fresh "
        "PostgreSQL database and a fresh broker namespace, with freshly started workers: one `celery worker "
        "-c 2` (prefork) per queue (order, inventory, payment, shipping), acks_late, prefetch 1, JSON. "
        "Results: the Redis backend on Redis; the database backend (`db+postgresql+psycopg`) on RabbitMQ, "
        "for every system.",
        "",
        "- **baseline** (`bench/baseline.py`, no project code): "
        "`chord([reserve, authorize], schedule) | capture | complete` on the same queues, each task one "
        "PostgreSQL insert; applied from the benchmark process; latency = submission -> commit of the "
        "`complete` row.",
        "- **"
        + "**, **".join(modes)
        + "** (the project): N `tok_ok` orders placed through `System(settings).runtime.order.place` "
        "(non-embedded) with `saga_mode` set to the mode, and the workers started with `CHECKOUT_SAGA_MODE` "
        "set to it; latency = the order's `created_at` -> `finished_at`; every order checked COMPLETED, the "
        "auditor clean, and the worker logs checked to show each saga's steps run by the mode's own tasks "
        "(orchestration: "
        + ", ".join(STEP_TASKS[ORCHESTRATION])
        + "; choreography: "
        + ", ".join(STEP_TASKS[CHOREOGRAPHY])
        + "), each at least once per saga, and none of the other mode's (no canvas task and no "
        "celery.chord_unlock in choreography).",
        "- sagas/s = N / (last completion - first submission). Messages = `Task ... received` lines in the "
        "worker logs (retries and chord_unlock polls included); events = rows of every service's event log; "
        "commits = `pg_stat_database.xact_commit` of "
        "the run's database minus the benchmark's own reads (polls, audit) and their pool pings; setup and "
        "warm-up included, divided by N + warm-up.",
    ]
    for summary in summaries:
        out += ["", f"## {summary.broker}", "", table(summary), ""]
        if comparison(summary):
            out += [comparison(summary), ""]
        out += ["Messages per saga, by task:", ""]
        out += [f"- {system}: {counts(summary.per_task(system))}." for system in summary.systems]
        out += ["", "Events written per saga, by type:", ""]
        out += [f"- {mode}: {counts(summary.per_event(mode))}." for mode in summary.modes]
        out += ["", "Rounds:", "", rounds_detail(summary)]
        for mode in summary.modes:
            out += ["", f"Where the extra cost goes, {mode}:", ""]
            out += [f"- {line}" for line in interpretation(summary, mode)]
    out += [
        "",
        "Reference: `../shared/CELERY_NOTES.md` §13 measured a raw chord(2) -> chain(3) canvas with one "
        "PostgreSQL transaction per task at ~70 sagas/s on this kind of machine.",
        "",
    ]
    return "\n".join(out)


def console_table(summaries: list[Summary]) -> str:
    out = []
    for summary in summaries:
        out += [f"{summary.broker}:", table(summary), ""]
        if comparison(summary):
            out += [comparison(summary), ""]
    return "\n".join(out)


# --- main -------------------------------------------------------------------------------


def selected_modes(mode: str) -> list[str]:
    return list(MODES) if mode == "both" else [mode]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Measure the checkout saga's sagas/s and latency, in each saga mode, against a raw-Celery "
        "baseline on the same broker, and write bench/REPORT.md.",
    )
    parser.add_argument("--broker", choices=[*BROKERS, "both"], default="both", help="broker(s) to measure")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both", help="saga mode(s) to measure")
    parser.add_argument("--sagas", type=int, default=300, metavar="N", help="timed sagas per measurement")
    parser.add_argument("--rounds", type=int, default=3, metavar="R", help="rounds per broker (medians)")
    parser.add_argument("--warmup", type=int, default=10, metavar="W", help="untimed sagas before each measurement")
    parser.add_argument("--report", type=Path, default=REPORT_PATH, help="where to write the report")
    args = parser.parse_args(argv)
    for name in ("sagas", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    brokers = list(BROKERS) if args.broker == "both" else [args.broker]
    modes = selected_modes(args.mode)
    progress = Progress()
    started = time.monotonic()
    load_start = f"{os.getloadavg()[0]:.2f}"
    logdir = Path(tempfile.mkdtemp(prefix="checkout-bench-"))
    summaries: list[Summary] = []
    failed = True
    try:
        with interrupts_raise_once():
            try:
                machine = versions()
                for kind in brokers:
                    summary = Summary(kind, modes)
                    for round_ in range(1, args.rounds + 1):
                        for system in summary.systems:
                            progress.prefix = f"{kind} round {round_}/{args.rounds} "
                            rundir = logdir / f"{kind}-{round_}-{system}"
                            rundir.mkdir()
                            if system == "baseline":
                                m = measure_baseline(kind, round_, args.sagas, args.warmup, rundir, progress)
                            else:
                                m = measure_project(kind, system, round_, args.sagas, args.warmup, rundir, progress)
                            summary.add(m)
                            progress.done(
                                f"{system}: {m.rate:.1f} sagas/s, p50 {m.p50 * 1000:.0f} ms, p95 {m.p95 * 1000:.0f} ms"
                            )
                    summaries.append(summary)
                failed = False
            finally:
                progress.prefix = ""
                left = leftovers()
                if left:
                    progress.done("left behind: " + "; ".join(left))
                    failed = True
                else:
                    progress.done("cleanup: no database, Redis key, vhost or worker left behind")
    except KeyboardInterrupt:
        sys.stderr.write(f"bench: interrupted; worker logs in {logdir}\n")
        return 130
    except ClusterError as exc:
        sys.stderr.write(f"bench: failed: {exc}\nworker logs in {logdir}\n")
        return 1
    if failed:
        sys.stderr.write(f"bench: something was left behind; worker logs in {logdir}\n")
        return 1
    shutil.rmtree(logdir, ignore_errors=True)
    took = time.monotonic() - started
    text = render(summaries, args, machine, (load_start, f"{os.getloadavg()[0]:.2f}"), took)
    args.report.write_text(text)
    print(console_table(summaries))
    progress.done(f"wrote {args.report} ({took:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
