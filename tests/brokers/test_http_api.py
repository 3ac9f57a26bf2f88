"""The HTTP API as deployed: ``python -m app api`` in its own process, the order service's
front door on Redis and PostgreSQL, the four services' workers running separately.

One set of processes for the module (starting them is most of its cost): a Redis key
prefix, a PostgreSQL database, the four workers and the API process, each with its own
log, all stopped at the end whatever happened; a failed test prints the API's log and the
workers'. Orders are placed and read only over HTTP: one completes, a declined card ends
CANCELLED with its reason, the events stream follows an order until it is terminal, /health
sees every worker, and one Idempotency-Key sent twice places one order.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api import System
from app.domain.states import StepOutcome
from config.settings import SERVICES, Settings
from tests.conftest import wait_until
from tests.support.cluster import (
    REPO_ROOT,
    ClusterError,
    Workers,
    background_process,
    free_port,
    log_text,
    postgres_database,
    redis_namespace,
    worker_env,
)
from tests.support.http import status_events

#: How long the API process may take to import, start its system and answer /health.
API_START_TIMEOUT = 60.0
#: How long a saga may take on two busy cores.
SAGA_TIMEOUT = 60.0
TERMINAL = {"COMPLETED", "CANCELLED"}
MUG = [{"sku": "MUG-01", "qty": 1}]

pytestmark = [pytest.mark.brokers, pytest.mark.timeout(240)]


@dataclass
class Deployment:
    """The API process's base URL and its log, and the workers behind it."""

    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    workers: Workers

    def logs(self) -> str:
        api = "\n".join(log_text(self.log).splitlines()[-60:])
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"----- api ({state}), last 60 lines of {self.log} -----\n{api}\n{self.workers.tails()}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Redis, PostgreSQL, the four workers and ``python -m app api --port <free port>``,
    for the whole module; every process stopped at the end."""
    logs = tmp_path_factory.mktemp("http-api")
    with redis_namespace() as broker, postgres_database() as database, Workers() as workers:
        settings = Settings(broker_url=broker.url, database_url=database, namespace=broker.namespace)
        env = worker_env(broker, database)
        system = System(settings).start()
        try:
            system.runtime.prepare()  # the tables, before the workers and the API race to create them
            system.runtime.declare_queues()
            for service in SERVICES:
                workers.start(service, env, logs / f"worker-{service}.log")
            try:
                workers.wait_ready(system.runtime.celery)
            except ClusterError as exc:
                pytest.fail(f"{exc}\n{workers.tails()}", pytrace=False)
            port = free_port()
            argv = [sys.executable, "-m", "app", "api", "--port", str(port)]
            with background_process(argv, env, logs / "api.log", REPO_ROOT) as proc:
                deployed = Deployment(f"http://127.0.0.1:{port}", logs / "api.log", proc, workers)
                wait_until(
                    lambda: answers_health(deployed),
                    timeout=API_START_TIMEOUT,
                    interval=0.2,
                    what="the API process to answer /health",
                    diagnostics=deployed.logs,
                )
                yield deployed
            assert proc.returncode == 0, f"the API process ended with {proc.returncode}\n{deployed.logs()}"
        finally:
            system.stop()
    left = workers.running()
    assert not left, f"worker process(es) still running after teardown: {left}"


def answers_health(deployed: Deployment) -> bool:
    if deployed.proc.poll() is not None:
        pytest.fail(f"the API process exited with {deployed.proc.returncode}\n{deployed.logs()}", pytrace=False)
    try:
        return httpx.get(f"{deployed.url}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False  # not listening yet


@pytest.fixture
def client(deployment: Deployment, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client of the API process; the processes' logs printed when the test fails."""
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        yield http
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed:
        print(f"\n[{request.node.nodeid}] logs after failure:\n{deployment.logs()}")


def customer() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def place(client: httpx.Client, token: str = "tok_ok") -> dict[str, Any]:
    placed = client.post("/orders", json={"customer_id": customer(), "items": MUG, "payment_token": token})
    assert placed.status_code == 201, placed.text
    assert placed.headers["location"] == f"/orders/{placed.json()['order_id']}"
    body: dict[str, Any] = placed.json()
    return body


def finished(client: httpx.Client, deployment: Deployment, order_id: str) -> dict[str, Any]:
    def terminal() -> dict[str, Any] | None:
        view = client.get(f"/orders/{order_id}")
        assert view.status_code == 200, view.text
        body: dict[str, Any] = view.json()
        return body if body["status"] in TERMINAL else None

    return wait_until(
        terminal, timeout=SAGA_TIMEOUT, interval=0.1, what=f"order {order_id} to finish", diagnostics=deployment.logs
    )


def test_an_order_placed_over_http_completes_on_the_workers(client: httpx.Client, deployment: Deployment) -> None:
    placed = place(client)
    assert placed["status"] == "PENDING" and placed["total_cents"] == 1299, placed
    done = finished(client, deployment, placed["order_id"])
    assert (done["status"], done["reason"]) == ("COMPLETED", None), done
    assert done["steps"] and set(done["steps"].values()) == {StepOutcome.DONE}, done["steps"]
    services = {e["service"] for e in done["events"]}
    assert set(SERVICES) <= services, services  # every service's worker did its part


def test_a_declined_card_ends_cancelled_with_its_reason(client: httpx.Client, deployment: Deployment) -> None:
    placed = place(client, "tok_declined")
    done = finished(client, deployment, placed["order_id"])
    assert (done["status"], done["reason"]) == ("CANCELLED", "card_declined"), done


def test_the_events_stream_follows_an_order_until_it_is_terminal(client: httpx.Client) -> None:
    order_id = place(client)["order_id"]
    seen = status_events(client, order_id)  # returns only once the server ends the stream
    assert seen and all(s["order_id"] == order_id for s in seen), seen
    assert seen[-1]["status"] == "COMPLETED", seen
    assert all(s["status"] not in TERMINAL for s in seen[:-1]), seen  # terminal only at the end


def test_health_sees_the_broker_every_database_and_every_worker(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200, health.text
    checks = {c["name"]: c for c in health.json()["checks"]}
    assert health.json()["ok"] is True and all(c["ok"] for c in checks.values()), checks
    for service in SERVICES:
        assert f"{service}@" in checks[f"worker {service}"]["detail"], checks  # the worker that answered
        assert f"database {service}" in checks
    assert "redis://" in checks["broker"]["detail"], checks["broker"]


def test_one_idempotency_key_sent_twice_places_one_order(client: httpx.Client) -> None:
    who, key = customer(), f"key-{uuid.uuid4()}"
    body = {"customer_id": who, "items": MUG}
    first = client.post("/orders", json=body, headers={"Idempotency-Key": key})
    again = client.post("/orders", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json()["order_id"] == first.json()["order_id"]
    listed = client.get("/orders", params={"limit": 500})
    assert listed.status_code == 200 and listed.json()["next"] is None, listed.text  # every order of the module
    assert [o["order_id"] for o in listed.json()["orders"] if o["customer_id"] == who] == [first.json()["order_id"]]
