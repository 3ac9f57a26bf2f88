"""The raw-Celery baseline: the checkout saga's shape with none of the project's code.

Five tasks on the project's four queues, wired as the saga's canvas::

    chord([bench.reserve (inventory), bench.authorize (payment)], bench.schedule (shipping))
        | bench.capture (payment) | bench.complete (order)

Each task does one short PostgreSQL transaction: it inserts ``(saga_id, step)`` into
``bench_steps`` with the commit-time clock, so the ``complete`` row says when a saga ended.
Celery is configured as the project configures it for the same broker: JSON, acks_late,
reject on worker lost, prefetch 1, one topic exchange, results on the same backend (the
broker's Redis, or ``db+postgresql`` on RabbitMQ, with the same chord poll interval), and
on Redis every key under the run's prefix.

Workers: ``celery -A bench.baseline worker -Q <queue> -c 2``, configured by BENCH_BROKER_URL,
BENCH_RESULT_BACKEND, BENCH_DATABASE_URL and BENCH_NAMESPACE. Nothing connects at import.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature
from kombu import Exchange, Queue

QUEUES: tuple[str, ...] = ("order", "inventory", "payment", "shipping")

#: step -> the queue its task runs on (the project's service for the same step).
STEPS: dict[str, str] = {
    "reserve": "inventory",
    "authorize": "payment",
    "schedule": "shipping",
    "capture": "payment",
    "complete": "order",
}

TABLE = "bench_steps"
EXCHANGE = Exchange("bench", type="topic", durable=True)

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    saga_id text NOT NULL,
    step text NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (saga_id, step)
)
"""
INSERT_STEP = f"INSERT INTO {TABLE} (saga_id, step, pid) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"


def celery_config(broker_url: str, result_backend: str, namespace: str = "") -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": [Queue(q, EXCHANGE, routing_key=f"{q}.#", durable=True) for q in QUEUES],
        "task_routes": {f"bench.{step}": {"queue": q, "routing_key": f"{q}.task"} for step, q in STEPS.items()},
        "task_default_queue": "order",
        "task_default_exchange": EXCHANGE.name,
        "task_default_exchange_type": EXCHANGE.type,
        "task_default_routing_key": "order.task",
        "task_create_missing_queues": False,
        "result_expires": 3600,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        "timezone": "UTC",
    }
    transport: dict[str, Any] = {}
    if broker_url.startswith("redis"):
        transport["visibility_timeout"] = 300
        if namespace:
            transport["global_keyprefix"] = f"{namespace}:"
    elif broker_url.startswith(("amqp", "pyamqp")):
        transport["confirm_publish"] = True
    conf["broker_transport_options"] = transport
    if result_backend.startswith("redis") and namespace:
        conf["result_backend_transport_options"] = {"global_keyprefix": f"{namespace}:"}
    if result_backend.startswith("db+"):
        conf["result_chord_retry_interval"] = 0.2
    return conf


class _Connections:
    """One psycopg connection per process (pool children get their own after the fork)."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._pid = 0
        self._conn: Any = None
        self._lock = threading.Lock()

    def insert(self, saga_id: str, step: str) -> None:
        import psycopg

        if self.url is None:
            raise RuntimeError("BENCH_DATABASE_URL is not set")
        with self._lock:
            pid = os.getpid()
            if self._conn is None or self._pid != pid or self._conn.closed:
                self._conn = psycopg.connect(libpq_url(self.url))
                self._pid = pid
            with self._conn.transaction():
                self._conn.execute(INSERT_STEP, (saga_id, step, pid))


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://...`` (SQLAlchemy) -> ``postgresql://...`` (libpq)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def make_app(broker_url: str, result_backend: str, database_url: str | None, namespace: str = "") -> Celery:
    """The baseline's Celery app, with its five tasks registered."""
    app = Celery("bench", set_as_current=False)
    app.conf.update(celery_config(broker_url, result_backend, namespace))
    db = _Connections(database_url)

    def define(step: str) -> None:
        def run(saga_id: str) -> str:
            db.insert(saga_id, step)
            return step

        app.task(name=f"bench.{step}", shared=False)(run)

    for step in STEPS:
        define(step)
    return app


def saga(app: Celery, saga_id: str) -> Signature:
    """The saga's canvas for one id (every task gets only the id, as an immutable signature)."""

    def sig(step: str) -> Signature:
        return app.signature(f"bench.{step}", args=(saga_id,), immutable=True)

    header = chord(group([sig("reserve"), sig("authorize")], app=app), sig("schedule"), app=app)
    return chain(header, sig("capture"), sig("complete"), app=app)


def create_schema(database_url: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(CREATE_TABLE)


app = make_app(
    os.environ.get("BENCH_BROKER_URL", "memory://"),
    os.environ.get("BENCH_RESULT_BACKEND", "cache+memory://"),
    os.environ.get("BENCH_DATABASE_URL"),
    os.environ.get("BENCH_NAMESPACE", ""),
)
