"""Fixtures for the broker tests: real Redis / RabbitMQ, PostgreSQL (or a shared SQLite
file), and the four services running as separate ``celery worker`` processes.

The machinery lives in :mod:`tests.support.cluster` (pytest-free, shared with
``bench/``); these fixtures only scope it to one test. Every test gets its own namespace
and leaves nothing behind:

* a fresh PostgreSQL database ``checkout_test_<hex>`` (dropped at teardown), or — with
  ``database`` parametrized ``"sqlite"`` — one SQLite file under the test's ``tmp_path``;
* on Redis, a unique ``CHECKOUT_NAMESPACE`` key prefix (every ``<prefix>:*`` key is deleted
  at teardown);
* on RabbitMQ, a fresh vhost ``checkout_test_<hex>`` (deleted at teardown);
* four worker processes, always stopped at teardown (SIGTERM, then SIGKILL of the
  process group), whether the test passed or not.

Teardown runs in reverse order of setup: workers stop first, then the test process's own
connections close, then the database, keys and vhost go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api import System
from config.settings import SERVICES, Settings
from tests.conftest import wait_until
from tests.support.cluster import (
    BROKERS,
    BrokerNamespace,
    ClusterError,
    Workers,
    broker_namespace,
    log_text,
    postgres_database,
    worker_env,
)

#: How long ``celery beat`` may take to start and have its first sweep run.
BEAT_START_TIMEOUT = 60.0


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The SQLAlchemy URL every process of the test uses: a fresh PostgreSQL database by
    default; one SQLite file under ``tmp_path`` when parametrized (indirect) ``"sqlite"``."""
    kind = getattr(request, "param", "postgresql")
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'checkout.db'}"
    else:
        raise ValueError(f"parametrize `database` (indirect) with 'postgresql' or 'sqlite', not {kind!r}")


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerNamespace]:
    """A private namespace on the broker named by the test's parameter ("redis" or "rabbitmq")."""
    kind = getattr(request, "param", None)
    if kind not in BROKERS:
        raise ValueError(f"parametrize `broker` (indirect) with 'redis' or 'rabbitmq', not {kind!r}")
    with broker_namespace(kind) as namespace:
        yield namespace


# --- the system, as the test process sees it ------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Extra settings for the whole system, by field name (a module overrides this fixture):
    the test process's Settings get them, and every worker (and beat) gets them as
    ``CHECKOUT_<NAME>`` variables, so all processes agree."""
    return {}


def settings_env(overrides: dict[str, Any]) -> dict[str, str]:
    """``{"saga_deadline_seconds": 8}`` -> ``{"CHECKOUT_SAGA_DEADLINE_SECONDS": "8"}``."""
    unknown = set(overrides) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"not settings: {sorted(unknown)}")
    return {f"CHECKOUT_{name.upper()}": str(value) for name, value in overrides.items()}


@pytest.fixture
def settings(broker: BrokerNamespace, database: str, settings_overrides: dict[str, Any], saga_mode: str) -> Settings:
    overrides = {"saga_mode": saga_mode, **settings_overrides}
    return Settings(broker_url=broker.url, database_url=database, namespace=broker.namespace, **overrides)


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def process_env(
    broker: BrokerNamespace, settings: Settings, settings_overrides: dict[str, Any], saga_mode: str
) -> dict[str, str]:
    """The environment of every worker (or beat) process of the test."""
    assert settings.database_url is not None
    return worker_env(broker, settings.database_url, settings_env({"saga_mode": saga_mode, **settings_overrides}))


@pytest.fixture
def service_env() -> dict[str, dict[str, str]]:
    """Extra environment of one service's worker, by service (a module overrides this): its
    broker or database URL pointing at a fault proxy, say."""
    return {}


@pytest.fixture
def workers(
    request: pytest.FixtureRequest,
    process_env: dict[str, str],
    service_env: dict[str, dict[str, str]],
    system: System,
    tmp_path: Path,
) -> Iterator[Workers]:
    """Start order, inventory, payment and shipping as separate ``celery worker`` processes
    and wait until all four answer a ping. Always stopped at teardown (and so is anything
    the test added to the group: a worker started again, ``celery beat``)."""
    group = Workers()
    try:
        for service in SERVICES:
            env = {**process_env, **service_env.get(service, {})}
            group.start(service, env, tmp_path / f"worker-{service}.log")
        try:
            group.wait_ready(system.runtime.celery)
        except ClusterError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield group
    finally:
        group.stop()
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            print(f"\n[{request.node.nodeid}] worker logs after failure:\n{group.tails()}")
        left = group.running()
        assert not left, f"worker process(es) still running after teardown: {left}"


@pytest.fixture
def beat(workers: Workers, process_env: dict[str, str], tmp_path: Path) -> Workers:
    """``celery -A workers.order beat`` (the saga and outbox sweeps) in the worker group,
    stopped with it, once the order worker has run its first ``order.sweep``."""
    workers.start_beat(process_env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    wait_until(
        lambda: "order.sweep[" in log_text(workers.logs["order"]),
        timeout=BEAT_START_TIMEOUT,
        interval=0.2,
        what="celery beat's first order.sweep to reach the order worker",
        diagnostics=workers.tails,
    )
    return workers


# The three-node RabbitMQ cluster of tests/brokers/test_rabbitmq_cluster.py.
from tests.support.rabbit_cluster import rabbit_cluster as rabbit_cluster  # noqa: E402
