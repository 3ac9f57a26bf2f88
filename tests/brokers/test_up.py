"""``make up`` as an operator runs it, on Redis and PostgreSQL: the four workers, the sales
analytics extension's worker, beat, the outbox relay and the HTTP API as separate processes
under honcho, orders placed, then Ctrl-C.

``make up`` itself is run (not the honcho command it wraps), in its own process group as a
terminal's foreground job would be, against this test's Redis key prefix and database, with
CHECKOUT_EXTENSIONS=analytics, so ``make up`` also starts the sales analytics worker, and
API_PORT set to a free port. The test waits until every worker and beat answer a ping and
the HTTP API's /health sees them all,
places orders — one of them while the broker is unreachable from the placing process, so
that only the relay process can send its ``OrderPlaced`` (the workers leave their outboxes
to it) — and waits until all of them are terminal and analytics has recorded how each
ended. Every line of output must carry its process's name; beat's sweep must reach the
order worker; the relay must say what it sent; every process must have
CHECKOUT_EXTENSIONS=analytics. Then SIGINT goes to the whole group, as Ctrl-C does: every
process must stop on its own (exit 0, no SIGKILL) within the timeout, and no process of the
run may be left anywhere on the machine.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.analytics import CANCELLED, COMPLETED, ended, sales_by_day
from app.api import System, validate_order
from app.bootstrap import Runtime
from config.settings import SERVICES, Settings
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, free_port, live_group_members

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = (*SERVICES, "analytics", "beat", "relay", "api")
WORKERS = (*SERVICES, "analytics")
TERMINAL = {"COMPLETED", "CANCELLED", "NEEDS_ATTENTION"}
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

#: honcho's lines: "12:00:01 order.1     | text" (the process, numbered) or "... system | ...".
PREFIXED = re.compile(r"^\d\d:\d\d:\d\d (?P<name>[A-Za-z0-9_-]+?)(?:\.\d+)? +\| ?(?P<text>.*)$")
STARTED = re.compile(r"(?P<name>[A-Za-z0-9_-]+)\.\d+ started \(pid=(?P<pid>\d+)\)")
STOPPED = re.compile(r"(?P<name>[A-Za-z0-9_-]+)\.\d+ stopped \(rc=(?P<rc>-?\d+)\)")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Quick rounds, so that the relay and beat show their work within the test; sales
    analytics on, in every process."""
    return {
        "outbox_sweep_seconds": 0.5,
        "outbox_grace_seconds": 0.5,
        "sweep_interval_seconds": 1.0,
        "extensions": "analytics",
    }


def environ_of(pid: int) -> dict[str, str]:
    """A live process's environment, from /proc."""
    items = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in items if item)


def carrying(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds ``marker`` (this run's namespace)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue  # gone, or not ours to read
        if needle in environment and state not in {"Z", "X"}:
            found.append(int(entry.name))
    return found


@contextmanager
def make_up(env: dict[str, str], log_path: Path, marker: str) -> Iterator[subprocess.Popen[bytes]]:
    """``make up`` in its own process group, output to ``log_path``. Whatever happens, nothing
    of it outlives the block: its group, every group honcho started, and any process still
    carrying ``marker`` are SIGKILLed on the way out."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            # -o: the virtualenv is taken as installed (the test runs from it); only `up` runs
            ["make", "--no-print-directory", "-o", ".venv/.installed", "up"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        groups = [proc.pid] + [int(m["pid"]) for m in STARTED.finditer(log_path.read_text(errors="replace"))]
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in carrying(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


def api_health(port: int) -> Any:
    """The HTTP API's /health as JSON once it answers 200 (None before: not listening yet,
    or a check still failing)."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    except httpx.TransportError:
        return None
    return answer.json() if answer.status_code == 200 else None


def place(system: System, customer: str, token: str = "tok_ok") -> str:
    order_id, created = system.runtime.order.place(
        validate_order(customer, items=[{"sku": "MUG-01", "qty": 1}], payment_token=token)
    )
    assert created
    return order_id


def place_with_the_broker_away(settings: Settings, customer: str, caplog: pytest.LogCaptureFixture) -> str:
    """Place an order from a process that cannot reach the broker: the order and its
    OrderPlaced commit, the send after the commit fails, and the event waits in the outbox.
    (The running relay may take it from there at any moment, so the proof that this process
    sent nothing is its own warning, not the outbox's contents.)"""
    away = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
    rt = Runtime(away)
    try:
        with caplog.at_level(logging.WARNING, logger="app.persistence.outbox"):
            caplog.clear()
            order_id, created = rt.order.place(validate_order(customer, items=[{"sku": "TEE-01", "qty": 1}]))
        assert created
        said = [r.getMessage() for r in caplog.records if r.name == "app.persistence.outbox"]
        assert "could not publish 1 event(s) of order now; the outbox sweep will" in said, said
    finally:
        rt.close()
    return order_id


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_make_up_runs_every_process_with_prefixed_logs_and_stops_them_all_on_ctrl_c(
    broker: BrokerNamespace,
    system: System,
    settings: Settings,
    process_env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {k: v for k, v in process_env.items() if not k.startswith(("MAKE", "MFLAGS")) and k != "METRICS"}
    env["API_PORT"] = str(free_port())
    marker = f"CHECKOUT_NAMESPACE={broker.namespace}"
    assert env.get("CHECKOUT_NAMESPACE") == broker.namespace and not carrying(marker)
    assert env.get("CHECKOUT_EXTENSIONS") == "analytics"
    log_path = tmp_path / "up.log"
    host = socket.gethostname()
    nodes = {f"{worker}@{host}" for worker in WORKERS} | {f"beat@{host}"}
    # The analytics extension's tables, as `python -m app analytics` reads them.
    analytics = system.runtime.databases["analytics"]

    with make_up(env, log_path, marker) as proc:

        def output() -> str:
            return log_path.read_text(errors="replace")

        def tail() -> str:
            return "----- make up, last 60 lines -----\n" + "\n".join(output().splitlines()[-60:])

        def all_answer() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"make up exited with {proc.returncode} while starting\n{tail()}", pytrace=False)
            replies = system.runtime.celery.control.ping(timeout=1.0) or []
            return nodes <= {name for reply in replies for name in reply}

        wait_until(
            all_answer, timeout=START_TIMEOUT, interval=0.2, what=f"{sorted(nodes)} to answer a ping", diagnostics=tail
        )
        health = wait_until(
            lambda: api_health(int(env["API_PORT"])),
            timeout=START_TIMEOUT,
            interval=0.2,
            what="the HTTP API to answer /health",
            diagnostics=tail,
        )
        assert health["ok"] and {c["name"] for c in health["checks"]} >= {f"worker {w}" for w in WORKERS}, health

        # Orders: some sent by this process after their commit, one only the relay can send.
        expected = {
            place(system, "up-ok-1"): ("COMPLETED", None),
            place(system, "up-ok-2"): ("COMPLETED", None),
            place(system, "up-declined", "tok_declined"): ("CANCELLED", "card_declined"),
            place_with_the_broker_away(settings, "up-stranded", caplog): ("COMPLETED", None),
        }

        def finished() -> dict[str, tuple[str, str | None]] | None:
            if proc.poll() is not None:
                pytest.fail(f"make up exited with {proc.returncode}\n{tail()}", pytrace=False)
            views = {oid: system.runtime.order.view(oid) for oid in expected}
            if any(v.status not in TERMINAL for v in views.values()):
                return None
            return {oid: (v.status, v.reason) for oid, v in views.items()}

        outcomes = wait_until(finished, timeout=90, interval=0.1, what="every order to finish", diagnostics=tail)
        assert outcomes == expected

        # Sales analytics recorded how each order ended, from the events delivered to its worker.
        ids = list(expected)

        def recorded() -> dict[str, tuple[str, str | None, int | None]] | None:
            if proc.poll() is not None:
                pytest.fail(f"make up exited with {proc.returncode}\n{tail()}", pytrace=False)
            query = select(ended.c.order_id, ended.c.outcome, ended.c.reason, ended.c.total_cents)
            rows = analytics.query(lambda c: c.execute(query.where(ended.c.order_id.in_(ids))).all())
            return {r.order_id: (r.outcome, r.reason, r.total_cents) for r in rows} if len(rows) == len(ids) else None

        views = {oid: system.runtime.order.view(oid) for oid in ids}
        want = {
            oid: (COMPLETED, None, views[oid].total_cents) if status == "COMPLETED" else (CANCELLED, reason, None)
            for oid, (status, reason) in expected.items()
        }
        got = wait_until(recorded, timeout=30, interval=0.1, what="analytics to record every order", diagnostics=tail)
        assert got == want
        days = sales_by_day(analytics)
        assert sum(d.completed for d in days) == 3 and sum(d.cancelled for d in days) == 1, days
        revenue = sum((d.revenue_cents for d in days), Counter[str]())
        completed = [v for v in views.values() if v.status == "COMPLETED"]
        assert revenue == Counter({completed[0].currency: sum(v.total_cents for v in completed)}), days

        def shown(name: str, text: str) -> bool:
            return any(m["name"] == name and text in m["text"] for m in map(PREFIXED.match, output().splitlines()) if m)

        # The relay said what it sent; beat's sweep reached the order worker.
        wait_until(
            lambda: shown("relay", "sent 1 event(s) of order left in its outbox: OrderPlaced x1"),
            timeout=10,
            what="the relay to log the OrderPlaced it sent",
            diagnostics=tail,
        )
        wait_until(
            lambda: shown("beat", "Sending due task sweep-overdue-sagas (order.sweep)")
            and shown("order", "Task order.sweep["),
            timeout=30,
            what="beat to send order.sweep and the order worker to receive it",
            diagnostics=tail,
        )

        wait_until(
            lambda: shown("analytics", "Task analytics.handle["),
            timeout=10,
            what="the analytics worker to log the events it handled",
            diagnostics=tail,
        )

        started = {m["name"]: int(m["pid"]) for m in STARTED.finditer(output())}
        assert set(started) == set(PROCESSES), started
        assert all(live_group_members(pid) for pid in started.values()), "a process group is gone before Ctrl-C"
        # Every process sends what it commits to the extensions it knows of: each must know analytics.
        extensions = {name: environ_of(pid).get("CHECKOUT_EXTENSIONS") for name, pid in started.items()}
        assert extensions == dict.fromkeys(PROCESSES, "analytics"), extensions

        # Ctrl-C: SIGINT to the foreground process group (make, honcho).
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make up still running {STOP_TIMEOUT:.0f}s after SIGINT\n{tail()}", pytrace=False)
        took = time.monotonic() - sent
        text = output()

        # Stopped cleanly: honcho asked each process to stop, each exited 0, none was killed.
        # make dies of the SIGINT itself (or passes on honcho's 130); on a busy machine it may
        # first see honcho end with 130, report "Error 130" and exit 2
        interrupted = proc.returncode in (-signal.SIGINT, 130) or (
            proc.returncode == 2 and text.rstrip().endswith("Error 130")
        )
        assert interrupted, f"make up ended with {proc.returncode}\n{tail()}"
        assert "SIGINT received" in text, tail()
        assert "SIGKILL" not in text, f"a process had to be killed\n{tail()}"
        stopped = {m["name"]: int(m["rc"]) for m in STOPPED.finditer(text)}
        assert stopped == dict.fromkeys(PROCESSES, 0), f"exit codes {stopped} after {took:.1f}s\n{tail()}"

        # Nothing left: not the processes' groups (worker pool children included), not make's,
        # nor any process anywhere still carrying this run's namespace.
        for name, pid in started.items():
            assert not live_group_members(pid), f"{name}: {live_group_members(pid)} still alive"
        assert not live_group_members(proc.pid), f"make's group: {live_group_members(proc.pid)} still alive"
        assert not carrying(marker), f"still running with {marker}: {carrying(marker)}"

        # Every line names its process; make's own last word on the interrupt is the one exception.
        lines = [line for line in text.splitlines() if line.strip()]
        unprefixed = [line for line in lines if not PREFIXED.match(line) and not line.startswith("make: ")]
        assert not unprefixed, f"lines without a process prefix: {unprefixed[:10]}"
        names = {m["name"] for m in map(PREFIXED.match, lines) if m}
        assert names == {*PROCESSES, "system"}, names
