"""A throwaway cluster on this machine's servers, without pytest.

Used by the broker tests' fixtures (``tests/brokers/conftest.py``) and by the benchmark
(``bench/run.py``). Every piece is a context manager that leaves nothing behind:

* :func:`postgres_database` — a fresh PostgreSQL database ``<prefix>_<hex>``, dropped on exit;
* :func:`redis_namespace` — a unique Redis key prefix (``CHECKOUT_NAMESPACE``); every
  ``<prefix>:*`` key is deleted on exit;
* :func:`rabbitmq_namespace` — a fresh RabbitMQ vhost, deleted on exit;
* :class:`Workers` — a group of ``celery worker`` processes (and, optionally, ``celery beat``),
  each in its own process group with its own log, stopped on exit (SIGTERM, then SIGKILL of
  the group); one can be SIGKILLed on purpose (:meth:`Workers.kill`) and started again;
* broker faults — :func:`restart_rabbitmq` (``stop_app`` / ``start_app``) and
  :func:`restart_redis` (``shutdown nosave`` and the same ``redis-server`` command line), each
  waiting until the broker answers again.

Exits run on exceptions and on KeyboardInterrupt too. Failures are reported as
:class:`ClusterError` (or :class:`WaitTimeout`), with the workers' log tails where useful.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]

# Where the servers are. Deliberately not CHECKOUT_* names: Settings owns that prefix.
REDIS_URL = os.environ.get("SAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
AMQP_BASE = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
PG_HOST = os.environ.get("SAGA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SAGA_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SAGA_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("SAGA_TEST_PG_ADMIN_DB", "test")

BROKERS: tuple[str, ...] = ("redis", "rabbitmq")
DEFAULT_PREFIX = "checkout_test"

CELERY = Path(sys.executable).parent / "celery"
WORKER_CONCURRENCY = 2
WORKER_START_TIMEOUT = 90.0
WORKER_STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 40

T = TypeVar("T")


class ClusterError(RuntimeError):
    """Something about the throwaway cluster went wrong (a server, a worker, a cleanup)."""


class WaitTimeout(ClusterError, TimeoutError):
    """:func:`poll_until` ran out of time."""


def poll_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    The pause only spaces the polls; the deadline bounds the wait. Raises
    :class:`WaitTimeout` (with ``diagnostics()`` appended) when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            extra = f"\n{diagnostics()}" if diagnostics is not None else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
    return result


def unique_name(prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>_<12 hex>``: a database, key prefix or vhost name no one else uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# --- PostgreSQL ---------------------------------------------------------------------


def pg_admin() -> Any:
    """An autocommit connection to the admin database."""
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DB, autocommit=True)


def postgres_url(name: str) -> str:
    """SQLAlchemy URL of database ``name`` on the test server (psycopg 3 driver)."""
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def create_database(name: str) -> None:
    from psycopg import sql

    with pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(name: str, timeout: float = 10.0) -> None:
    """Drop ``name``, terminating its backends first; a backend that reconnects between the
    two statements makes the drop fail, so it is retried until ``timeout``."""
    from psycopg import sql

    with pg_admin() as conn:

        def dropped() -> bool:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            except Exception as exc:
                if "is being accessed by other users" not in str(exc):
                    raise
                return False
            return True

        poll_until(dropped, timeout=timeout, interval=0.2, what=f"database {name} to be dropped")
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if left is not None:
        raise ClusterError(f"database {name} still exists after DROP")


def database_commits(name: str) -> int:
    """Transactions committed in database ``name`` so far (``pg_stat_database.xact_commit``).

    Statistics are flushed when a backend goes idle or exits, so read this after the
    database's clients have disconnected."""
    with pg_admin() as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row is not None else 0


@contextmanager
def postgres_database(prefix: str = DEFAULT_PREFIX) -> Iterator[str]:
    """A fresh, empty PostgreSQL database; yields its SQLAlchemy URL, drops it on exit."""
    name = unique_name(prefix)
    create_database(name)
    try:
        yield postgres_url(name)
    finally:
        drop_database(name)


def database_name(url: str) -> str:
    """The database part of a PostgreSQL URL made by :func:`postgres_url`."""
    return url.rsplit("/", 1)[-1]


# --- brokers ------------------------------------------------------------------------


@dataclass
class BrokerNamespace:
    """One run's private corner of a broker."""

    kind: str  # "redis" or "rabbitmq"
    url: str
    namespace: str  # CHECKOUT_NAMESPACE (Redis key prefix); "" for RabbitMQ
    vhost: str | None = None

    def env(self) -> dict[str, str]:
        """The CHECKOUT_* variables that put a process in this namespace."""
        env = {"CHECKOUT_BROKER_URL": self.url}
        if self.namespace:
            env["CHECKOUT_NAMESPACE"] = self.namespace
        return env


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ClusterError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def rabbitmq_queues(vhost: str) -> dict[str, int]:
    """Queue name -> messages ready, in one vhost."""
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
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


def delete_redis_prefix(prefix: str) -> None:
    """Delete every ``<prefix>:*`` key; raise if any is left."""
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
    if left:
        raise ClusterError(f"{len(left)} key(s) of {prefix} left in Redis after cleanup")


@contextmanager
def redis_namespace(prefix: str = DEFAULT_PREFIX) -> Iterator[BrokerNamespace]:
    """A unique key prefix on the test Redis; every key under it is deleted on exit."""
    name = unique_name(prefix)
    if redis_keys(f"{name}:*"):
        raise ClusterError(f"fresh prefix {name} already has keys")
    try:
        yield BrokerNamespace("redis", REDIS_URL, name)
    finally:
        delete_redis_prefix(name)


@contextmanager
def rabbitmq_namespace(prefix: str = DEFAULT_PREFIX) -> Iterator[BrokerNamespace]:
    """A fresh vhost on the test RabbitMQ (guest has every permission); deleted on exit."""
    vhost = unique_name(prefix)
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield BrokerNamespace("rabbitmq", f"{AMQP_BASE}/{vhost}", "", vhost=vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)
        listed = rabbitmqctl("list_vhosts", "--no-table-headers", "name").split()
        if vhost in listed:
            raise ClusterError(f"vhost {vhost} still exists after delete_vhost")


@contextmanager
def broker_namespace(kind: str, prefix: str = DEFAULT_PREFIX) -> Iterator[BrokerNamespace]:
    """:func:`redis_namespace` or :func:`rabbitmq_namespace`, by name."""
    if kind == "redis":
        with redis_namespace(prefix) as ns:
            yield ns
    elif kind == "rabbitmq":
        with rabbitmq_namespace(prefix) as ns:
            yield ns
    else:
        raise ValueError(f"broker kind must be one of {', '.join(BROKERS)}, not {kind!r}")


# --- broker faults ------------------------------------------------------------------

#: How this machine's Redis is started: it keeps NOTHING on disk, so a restart empties it.
REDIS_SERVER_COMMAND: tuple[str, ...] = (
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
)
BROKER_RESTART_TIMEOUT = 90.0


def redis_answers() -> bool:
    """True when the test Redis answers PING (and is not still loading)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError):
        return False
    finally:
        client.close()


def amqp_answers(vhost: str = "/") -> bool:
    """True when RabbitMQ accepts an AMQP connection to ``vhost`` (port open and app running)."""
    from kombu import Connection

    url = f"{AMQP_BASE}/{'' if vhost == '/' else vhost}"
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.connect()
            return bool(conn.connected)
    except Exception:
        return False


def brokers_up() -> dict[str, bool]:
    """Whether each broker answers: Redis a PING, RabbitMQ ``rabbitmqctl status`` and AMQP."""
    try:
        rabbitmqctl("status")
        rabbit = amqp_answers()
    except (ClusterError, subprocess.TimeoutExpired):
        rabbit = False
    return {"redis": redis_answers(), "rabbitmq": rabbit}


def stop_redis(timeout: float = 30.0) -> None:
    """``SHUTDOWN NOSAVE``; returns once the port no longer answers."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.shutdown(nosave=True)
    except redis.exceptions.ConnectionError:
        pass  # the server closed the connection on its way out
    finally:
        client.close()
    poll_until(lambda: not redis_answers(), timeout=timeout, interval=0.1, what="Redis to stop")


def start_redis(timeout: float = BROKER_RESTART_TIMEOUT) -> None:
    """Start Redis with :data:`REDIS_SERVER_COMMAND` (unless it answers already) and wait for PING."""
    if not redis_answers():
        done = subprocess.run(list(REDIS_SERVER_COMMAND), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise ClusterError(f"redis-server failed to start ({done.returncode}): {done.stderr or done.stdout}")
    poll_until(redis_answers, timeout=timeout, interval=0.1, what="Redis to answer PING")


def stop_rabbitmq_app() -> None:
    """``rabbitmqctl stop_app``: the node stays up, every AMQP connection is closed."""
    rabbitmqctl("stop_app")


def start_rabbitmq_app(vhosts: tuple[str, ...] = (), timeout: float = BROKER_RESTART_TIMEOUT) -> None:
    """``rabbitmqctl start_app``, then wait until AMQP answers on ``/`` and every ``vhosts``."""
    rabbitmqctl("start_app")
    for vhost in ("/", *vhosts):
        poll_until(partial(amqp_answers, vhost), timeout=timeout, interval=0.2, what=f"RabbitMQ vhost {vhost}")


@contextmanager
def broker_outage(kind: str, vhosts: tuple[str, ...] = ()) -> Iterator[None]:
    """Stop the broker for the body of the ``with``; whatever happens, start it again on
    exit and wait until it answers (RabbitMQ: on ``/`` and ``vhosts``)."""
    if kind not in BROKERS:
        raise ValueError(f"broker kind must be one of {', '.join(BROKERS)}, not {kind!r}")
    try:
        if kind == "redis":
            stop_redis()
        else:
            stop_rabbitmq_app()
        yield
    finally:
        if kind == "redis":
            start_redis()
        else:
            start_rabbitmq_app(vhosts)


# --- other processes -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def background_process(
    argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path, stop_timeout: float = 15.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group, its output in ``log_path``; on the way out
    (whatever happened) SIGTERM it, then SIGKILL whatever is left of its group."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)


# --- worker processes ------------------------------------------------------------------


def worker_env(broker: BrokerNamespace, database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without any CHECKOUT_* of the caller's shell, plus this run's broker
    namespace and database (and ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(broker.env())
    env["CHECKOUT_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def log_text(path: Path) -> str:
    """What a process's log holds so far ("" while there is none)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are still alive (not zombies), from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")"
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in {"Z", "X"}:
            alive.append(int(stat.parent.name))
    return alive


@dataclass
class Workers:
    """A group of ``celery worker`` processes, each with its own log file.

    ``with Workers() as group: group.start(...)`` stops every one of them on exit."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    #: Members that are not workers (``celery beat``): they answer no ping.
    schedulers: set[str] = field(default_factory=set)

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def nodenames(self) -> set[str]:
        host = socket.gethostname()
        return {f"{name}@{host}" for name in self.procs if name not in self.schedulers}

    def exited(self) -> dict[str, int]:
        return {s: p.returncode for s, p in self.procs.items() if p.poll() is not None}

    def running(self) -> dict[str, int]:
        """Name -> pid of every worker whose process is still alive."""
        return {s: p.pid for s, p in self.procs.items() if p.poll() is None}

    def tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for name, path in self.logs.items():
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                text = [f"<cannot read {path}: {exc}>"]
            proc = self.procs.get(name)
            state = "running" if proc is not None and proc.poll() is None else f"exited {proc and proc.returncode}"
            parts.append(f"----- {name} worker ({state}), last {lines} lines of {path} -----")
            parts.extend(text)
        return "\n".join(parts)

    def start(
        self,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        app: str | None = None,
        queue: str | None = None,
        concurrency: int = WORKER_CONCURRENCY,
        loglevel: str = "INFO",
        append: bool = False,
    ) -> None:
        """Start ``celery -A <app> worker -Q <queue> -n <name>@%h`` (app defaults to
        ``workers.<name>``, queue to ``name``) in its own process group. ``append`` keeps
        what ``log_path`` already holds (a worker started again after :meth:`kill`)."""
        argv = ["-A", app or f"workers.{name}", "worker", "-Q", queue or name, "-n", f"{name}@%h"]
        argv += ["-c", str(concurrency), f"--loglevel={loglevel}"]
        self._spawn(name, argv, env, log_path, append=append)

    def start_beat(
        self,
        env: Mapping[str, str],
        log_path: Path,
        schedule: Path,
        *,
        name: str = "beat",
        app: str = "workers.order",
        loglevel: str = "INFO",
    ) -> None:
        """Start ``celery -A <app> beat -s <schedule>`` in its own process group. It is a
        member of the group (stopped with it, in :meth:`tails`) but answers no ping."""
        self.schedulers.add(name)
        self._spawn(name, ["-A", app, "beat", "-s", str(schedule), f"--loglevel={loglevel}"], env, log_path)

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, append: bool = False) -> None:
        if not CELERY.exists():
            raise ClusterError(f"no celery executable at {CELERY}")
        running = self.procs.get(name)
        if running is not None and running.poll() is None:
            raise ClusterError(f"{name} is already running (pid {running.pid})")
        self.logs[name] = log_path
        with open(log_path, "ab" if append else "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(CELERY), *argv],
                cwd=REPO_ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: pool children die with it
            )

    def kill(self, name: str, timeout: float = 10.0) -> int:
        """SIGKILL the whole process group of ``name`` (main process and pool children, no
        warm shutdown, nothing acknowledged) and wait until it is gone; returns its pid."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)

        poll_until(
            lambda: not live_group_members(proc.pid),
            timeout=timeout,
            interval=0.05,
            what=f"process group of {name} to exit",
            diagnostics=lambda: f"still alive: {live_group_members(proc.pid)}",
        )
        return proc.pid

    def wait_ready(self, control_app: Any, timeout: float = WORKER_START_TIMEOUT) -> None:
        """Until every worker answers a ping sent through ``control_app`` (a Celery app on
        the same broker). Raises ClusterError if one exits, WaitTimeout after ``timeout``."""
        expected = self.nodenames()

        def all_answer() -> bool:
            dead = self.exited()
            if dead:
                raise ClusterError(f"worker(s) exited during startup: {dead}\n{self.tails()}")
            replies = control_app.control.ping(timeout=1.0) or []
            answered = {name for reply in replies for name in reply}
            return expected <= answered

        poll_until(
            all_answer,
            timeout=timeout,
            interval=0.2,
            what=f"workers {sorted(expected)} to answer a ping",
            diagnostics=self.tails,
        )

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT) -> None:
        """SIGTERM (warm shutdown) to every worker, wait, then SIGKILL whatever is left —
        including orphaned pool children, via the process group."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
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
