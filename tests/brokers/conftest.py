"""Fixtures for the broker tests: real Redis / RabbitMQ, PostgreSQL, and the four services
running as separate ``celery worker`` processes.

Every test gets its own namespace and leaves nothing behind:

* a fresh PostgreSQL database ``checkout_test_<hex>`` (dropped at teardown);
* on Redis, a unique ``CHECKOUT_NAMESPACE`` key prefix (every ``<prefix>:*`` key is deleted
  at teardown);
* on RabbitMQ, a fresh vhost ``checkout_test_<hex>`` (deleted at teardown);
* four worker processes, always stopped at teardown (SIGTERM, then SIGKILL of the
  process group), whether the test passed or not.

Teardown runs in reverse order of setup: workers stop first, then the test process's own
connections close, then the database, keys and vhost go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.api import System
from config.settings import SERVICES, Settings
from tests.conftest import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

# Where the servers are. Deliberately not CHECKOUT_* names: Settings owns that prefix.
REDIS_URL = os.environ.get("SAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
AMQP_BASE = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
PG_HOST = os.environ.get("SAGA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SAGA_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SAGA_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("SAGA_TEST_PG_ADMIN_DB", "test")

CELERY = Path(sys.executable).parent / "celery"
WORKER_CONCURRENCY = 2
WORKER_START_TIMEOUT = 90.0
WORKER_STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 40

T = TypeVar("T")


# --- PostgreSQL ---------------------------------------------------------------------


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, autocommit=True)


def _drop_database(name: str) -> None:
    from psycopg import sql

    with _pg_admin() as conn:
        for _ in range(10):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                break
            except Exception as exc:  # a backend reconnected between the two statements
                if "is being accessed by other users" not in str(exc):
                    raise
                time.sleep(0.2)
        else:
            raise RuntimeError(f"could not drop database {name}")
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert left is None, f"database {name} still exists after DROP"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; yields its SQLAlchemy URL."""
    from psycopg import sql

    name = f"checkout_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _drop_database(name)


# --- brokers ------------------------------------------------------------------------


@dataclass
class BrokerNamespace:
    """One test's private corner of a broker."""

    kind: str  # "redis" or "rabbitmq"
    url: str
    namespace: str  # CHECKOUT_NAMESPACE (Redis key prefix); "" for RabbitMQ
    vhost: str | None = None

    def env(self) -> dict[str, str]:
        env = {"CHECKOUT_BROKER_URL": self.url}
        if self.namespace:
            env["CHECKOUT_NAMESPACE"] = self.namespace
        return env


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def rabbitmq_queues(vhost: str) -> dict[str, int]:
    """Queue name -> messages ready, in one vhost."""
    out = _rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
    queues = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            queues[parts[0]] = int(parts[1])
    return queues


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def redis_keys(pattern: str) -> list[str]:
    client = redis_client()
    try:
        return [k.decode() for k in client.scan_iter(match=pattern, count=1000)]
    finally:
        client.close()


def redis_members(key: str) -> set[str]:
    client = redis_client()
    try:
        return {m.decode() for m in client.smembers(key)}
    finally:
        client.close()


def _redis_namespace() -> Iterator[BrokerNamespace]:
    prefix = f"checkout_test_{uuid.uuid4().hex[:12]}"
    assert not redis_keys(f"{prefix}:*"), f"fresh prefix {prefix} already has keys"
    try:
        yield BrokerNamespace("redis", REDIS_URL, prefix)
    finally:
        client = redis_client()
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
            left = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        finally:
            client.close()
        assert not left, f"{len(left)} key(s) of {prefix} left in Redis after cleanup"


def _rabbitmq_namespace() -> Iterator[BrokerNamespace]:
    vhost = f"checkout_test_{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield BrokerNamespace("rabbitmq", f"{AMQP_BASE}/{vhost}", "", vhost=vhost)
    finally:
        _rabbitmqctl("delete_vhost", vhost)
        listed = _rabbitmqctl("list_vhosts", "--no-table-headers", "name").split()
        assert vhost not in listed, f"vhost {vhost} still exists after delete_vhost"


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerNamespace]:
    """A private namespace on the broker named by the test's parameter ("redis" or "rabbitmq")."""
    kind = getattr(request, "param", None)
    if kind == "redis":
        yield from _redis_namespace()
    elif kind == "rabbitmq":
        yield from _rabbitmq_namespace()
    else:
        raise ValueError(f"parametrize `broker` (indirect) with 'redis' or 'rabbitmq', not {kind!r}")


# --- the system, as the test process sees it ------------------------------------------


@pytest.fixture
def settings(broker: BrokerNamespace, pg_database: str) -> Settings:
    return Settings(broker_url=broker.url, database_url=pg_database, namespace=broker.namespace)


@pytest.fixture
def system(settings: Settings) -> Iterator[System]:
    """A non-embedded System (it only writes orders); every service's tables created up
    front, so the workers' own ``worker_init`` finds them there instead of racing on DDL."""
    assert not settings.embedded
    sys_ = System(settings).start()
    try:
        sys_.runtime.prepare()
        sys_.runtime.declare_queues()
        yield sys_
    finally:
        sys_.stop()


# --- worker processes ------------------------------------------------------------------


@dataclass
class Workers:
    """The four service workers, each a ``celery worker`` process with its own log."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def nodenames(self) -> set[str]:
        import socket

        host = socket.gethostname()
        return {f"{service}@{host}" for service in self.procs}

    def exited(self) -> dict[str, int]:
        return {s: p.returncode for s, p in self.procs.items() if p.poll() is not None}

    def tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for service, path in self.logs.items():
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                text = [f"<cannot read {path}: {exc}>"]
            proc = self.procs.get(service)
            state = "running" if proc is not None and proc.poll() is None else f"exited {proc and proc.returncode}"
            parts.append(f"----- {service} worker ({state}), last {lines} lines of {path} -----")
            parts.extend(text)
        return "\n".join(parts)

    def start(self, service: str, env: dict[str, str], log_path: Path) -> None:
        self.logs[service] = log_path
        with open(log_path, "wb") as log:
            self.procs[service] = subprocess.Popen(
                [
                    str(CELERY),
                    "-A",
                    f"workers.{service}",
                    "worker",
                    "-Q",
                    service,
                    "-n",
                    f"{service}@%h",
                    "-c",
                    str(WORKER_CONCURRENCY),
                    "--loglevel=INFO",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: pool children die with it
            )

    def stop(self) -> None:
        """SIGTERM (warm shutdown) to every worker, wait, then SIGKILL whatever is left —
        including orphaned pool children, via the process group."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            # proc.pid is the group id (start_new_session); the group outlives its leader.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
                pass


def worker_env(broker: BrokerNamespace, settings: Settings) -> dict[str, str]:
    """os.environ without any CHECKOUT_* of the caller's shell, plus this test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(broker.env())
    assert settings.database_url is not None
    env["CHECKOUT_DATABASE_URL"] = settings.database_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def workers(
    request: pytest.FixtureRequest, broker: BrokerNamespace, settings: Settings, system: System, tmp_path: Path
) -> Iterator[Workers]:
    """Start order, inventory, payment and shipping as separate ``celery worker`` processes
    and wait until all four answer a ping. Always stopped at teardown."""
    assert CELERY.exists(), f"no celery executable at {CELERY}"
    env = worker_env(broker, settings)
    group = Workers()
    try:
        for service in SERVICES:
            group.start(service, env, tmp_path / f"worker-{service}.log")
        expected = group.nodenames()

        def all_answer() -> bool:
            dead = group.exited()
            if dead:
                pytest.fail(f"worker(s) exited during startup: {dead}\n{group.tails()}", pytrace=False)
            replies = system.runtime.celery.control.ping(timeout=1.0) or []
            answered = {name for reply in replies for name in reply}
            return expected <= answered

        wait_until(
            all_answer,
            timeout=WORKER_START_TIMEOUT,
            interval=0.2,
            what=f"workers {sorted(expected)} to answer a ping",
            diagnostics=group.tails,
        )
        yield group
    finally:
        group.stop()
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            print(f"\n[{request.node.nodeid}] worker logs after failure:\n{group.tails()}")
        left = {s: p.pid for s, p in group.procs.items() if p.poll() is None}
        assert not left, f"worker process(es) still running after teardown: {left}"
