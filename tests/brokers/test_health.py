"""`python -m app health` against real workers: exit 0 with all four, 1 without one."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.api import System
from app.bootstrap import Runtime
from app.messaging.queues import queue_depths
from app.operations.health import check
from config.settings import SERVICES, Settings
from tests.support.cluster import BrokerNamespace, Workers, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_health_sees_each_service_worker(system: System, workers: Workers, process_env: dict[str, str]) -> None:
    results = {r.name: r for r in check(system.runtime, SERVICES, timeout=3)}
    assert all(r.ok for r in results.values()), results
    assert all(results[f"worker {s}"].detail.startswith(f"{s}@") for s in SERVICES)
    # the broker as configured, with no password made up where it has none
    assert results["broker"].detail == system.runtime.settings.broker_url
    assert "@" not in system.runtime.settings.broker_url

    done = subprocess.run(
        [sys.executable, "-m", "app", "health", "--timeout", "3"],
        cwd=ROOT,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok  ") == 1 + len(SERVICES) * 2

    workers.stop()
    results = {r.name: r for r in check(system.runtime, ("payment",), timeout=1)}
    assert results["broker"].ok and results["database payment"].ok
    assert not results["worker payment"].ok
    assert "no worker answered for queue 'payment'" in results["worker payment"].detail


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_this_host_counts_only_the_worker_named_after_this_host(
    system: System, workers: Workers, process_env: dict[str, str]
) -> None:
    """A container's healthcheck (`--this-host`) must not pass on another container's worker."""
    here = {r.name: r for r in check(system.runtime, ("payment",), timeout=3, host=socket.gethostname())}
    assert here["worker payment"].ok and here["worker payment"].detail == f"payment@{socket.gethostname()}"

    elsewhere = {r.name: r for r in check(system.runtime, ("payment",), timeout=1, host="elsewhere")}
    assert not elsewhere["worker payment"].ok
    assert "no worker payment@elsewhere answered for queue 'payment'" in elsewhere["worker payment"].detail

    done = subprocess.run(
        [sys.executable, "-m", "app", "health", "--service", "order", "--this-host", "--timeout", "3"],
        cwd=ROOT,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"order@{socket.gethostname()}" in done.stdout


@pytest.mark.brokers
@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_failover_list_is_tried_to_its_last_broker(broker: BrokerNamespace, tmp_path: Path) -> None:
    """A cluster's URL list whose first two nodes are down (nobody listens on their ports)
    still reaches the third: the health check and the queue depths the sweeper and the
    metrics read try every broker of the list once, not just the first two."""
    down = [f"amqp://guest:guest@127.0.0.1:{free_port()}/{broker.vhost}" for _ in range(2)]
    settings = Settings(broker_url=";".join([*down, broker.url]), database_url=f"sqlite:///{tmp_path / 'x.db'}")
    rt = Runtime(settings)
    try:
        rt.declare_queues()
        (broker_check,) = [r for r in check(rt, (), timeout=3) if r.name == "broker"]
        assert broker_check.ok, broker_check.detail
        depths = queue_depths(rt.celery, settings, timeout=3)
        assert {name: depth for name, depth in depths.items() if name in SERVICES} == {s: (0, 0) for s in SERVICES}
    finally:
        rt.close()
