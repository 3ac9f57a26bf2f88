"""Flower as ``make flower`` runs it (``python -m app.operations.flower``), watching the four service
workers on Redis, asked through its HTTP API with basic auth.

It must see every service worker on its own queue with the project's tasks registered,
and, once checkout traffic has run, every task name of the saga, each on its service's
worker, and a task's stored result. The same holds with message signing on (workers
that accept only signed messages, signed results): Flower's control messages (it turns
the workers' task events on) are signed with the system's key, and it reads the signed
results. Without credentials its API and its ``/metrics`` answer 401; only
``/healthcheck`` is open; and it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from app.api import System, validate_order
from app.messaging.consumer import FORGED
from config.settings import SERVICES
from tests.conftest import wait_until
from tests.support.cluster import Workers, background_process, free_port
from tests.support.signing import cert_store, make_signer, signing_overrides

ROOT = Path(__file__).resolve().parents[2]

#: What one completed and one declined order run between them: the forward steps, the
#: compensations of a declined card, and the order's own moves.
SAGA_TASKS = {
    "order.start",
    "inventory.reserve",
    "payment.authorize",
    "shipping.schedule",
    "payment.capture",
    "order.complete",
    "order.compensate",
    "inventory.release",
    "payment.void",
    "order.cancel",
}

#: A task of every service that does nothing for an order that does not exist.
PROBES = {f"{service}.republish" for service in SERVICES}

# No proxy between this test and Flower, whatever the environment says.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with HTTP.open(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port or len(address) != width:
                continue
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
            found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw))
    return found


@pytest.fixture(params=["plain", "signed"])
def settings_overrides(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Every process plain, or every one signing its messages with one key (in the environment)."""
    if request.param == "plain":
        return {}
    signer = make_signer(tmp_path / "keys", "system")
    return signing_overrides(signer, cert_store(tmp_path / "trusted", signer)) | {"signing_key": signer.key_pem()}


def flower(env: dict[str, str], log_path: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """``python -m app.operations.flower`` (what ``make flower`` runs) in its own process group;
    always stopped on exit: SIGTERM, then SIGKILL."""
    return background_process([sys.executable, "-m", "app.operations.flower"], env, log_path, ROOT)


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_flower_shows_the_service_workers_and_the_task_names_behind_basic_auth(
    system: System, workers: Workers, process_env: dict[str, str], tmp_path: Path
) -> None:
    signed = process_env.get("CHECKOUT_SIGNING") == "on"
    assert system.runtime.celery.conf.accept_content == (["auth"] if signed else ["json"])
    user, password = "ops", secrets.token_urlsafe(16) + ",:x"  # a comma and a colon must not break it
    auth = (user, password)
    port = free_port()
    env = {k: v for k, v in process_env.items() if not k.startswith("FLOWER_")}
    env |= {"CHECKOUT_FLOWER_USER": user, "CHECKOUT_FLOWER_PASSWORD": password, "CHECKOUT_FLOWER_PORT": str(port)}
    log_path = tmp_path / "flower.log"
    base = f"http://127.0.0.1:{port}"
    nodes = workers.nodenames()
    project_tasks = {name for name in system.runtime.celery.tasks if not name.startswith("celery.")}

    with flower(env, log_path) as proc:

        def log_tail() -> str:
            return "----- flower -----\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"Flower exited with {proc.returncode}\n{log_tail()}", pytrace=False)
            try:
                return http_get(f"{base}/healthcheck") == (200, b"OK")
            except OSError:
                return False  # not listening yet

        wait_until(healthy, timeout=60, interval=0.1, what="Flower to answer /healthcheck", diagnostics=log_tail)

        # Bound to this host only, by default.
        assert listening_addresses(port) == {"127.0.0.1"}

        # Nothing but /healthcheck without the right credentials — /metrics included.
        for path in ("/api/workers", "/api/task/types", "/api/tasks", "/metrics", "/workers"):
            assert http_get(base + path)[0] == 401, path
            assert http_get(base + path, (user, "wrong"))[0] == 401, path
            # what a password split at its comma would have let in
            assert http_get(base + path, (user, password.split(",")[0]))[0] == 401, path
            assert http_get(base + path, ("", password.split(":")[-1]))[0] == 401, path

        # The four service workers, each on its own queue, with the project's tasks.
        def all_workers() -> dict[str, Any] | None:
            status, body = http_get(f"{base}/api/workers?refresh=1", auth)
            assert status == 200, body
            seen = json.loads(body)
            complete = all(seen.get(n, {}).get("registered") and seen[n].get("active_queues") for n in nodes)
            return seen if complete else None

        seen = wait_until(all_workers, timeout=60, interval=0.5, what=f"Flower to list {sorted(nodes)}")
        for service in SERVICES:
            (node,) = [n for n in nodes if n.startswith(f"{service}@")]
            assert {q["name"] for q in seen[node]["active_queues"]} == {service}
            assert project_tasks <= set(seen[node]["registered"]), node

        # Flower turns the workers' task events on by a broadcast every few seconds; until
        # each worker has it, its tasks run unseen. A harmless task per service shows when.
        def probes_seen() -> bool:
            unseen = PROBES - task_types(base, auth)
            for name in unseen:
                system.runtime.celery.send_task(name, args=({"order_id": "flower-probe"},), ignore_result=True)
            return not unseen

        wait_until(probes_seen, timeout=60, interval=0.5, what=f"Flower to see {sorted(PROBES)}", diagnostics=log_tail)

        placed = {
            "COMPLETED": place(system, "flower-ok", "tok_ok"),
            "CANCELLED": place(system, "flower-declined", "tok_declined"),
        }
        for expected, order_id in placed.items():
            status = wait_until(
                lambda oid=order_id: (s := system.runtime.order.status(oid)) != "PENDING" and s,
                timeout=60,
                what=f"order {order_id} to finish",
                diagnostics=workers.tails,
            )
            assert status == expected, order_id

        wait_until(
            lambda: SAGA_TASKS <= task_types(base, auth),
            timeout=30,
            interval=0.2,
            what=f"Flower to see {sorted(SAGA_TASKS)}",
            diagnostics=lambda: f"seen: {sorted(task_types(base, auth))}",
        )

        # Each task ran on its own service's worker, as Flower reports it.
        status, body = http_get(f"{base}/api/tasks?limit=1000", auth)
        assert status == 200, body
        tasks = json.loads(body).values()
        ran = {(task["name"], task["worker"]) for task in tasks if task.get("name") and task.get("worker")}
        assert {name for name, _ in ran} >= SAGA_TASKS | PROBES
        for name, worker in ran:
            assert worker.split("@", 1)[0] == name.split(".", 1)[0], (name, worker)

        # A task's result, as the result backend holds it (the page asks Flower's own app).
        reserved = [tid for tid, task in json.loads(body).items() if task.get("name") == "inventory.reserve"]
        status, body = http_get(f"{base}/api/task/result/{reserved[0]}", auth)
        assert status == 200, body
        assert json.loads(body)["state"] == "SUCCESS", body
        # nothing Flower sent (its control messages) was refused as forged or unsigned
        assert not [d for d in system.runtime.dead_letters.find() if d.reason.startswith(FORGED)]

        # With the credentials, /metrics is Flower's Prometheus page for these workers
        # (a worker counts as online from its next heartbeat event).
        wanted = [f'flower_worker_online{{worker="{node}"}} 1.0' for node in nodes] + ['task="inventory.reserve"']

        def metrics() -> str:
            status, body = http_get(f"{base}/metrics", auth)
            assert status == 200, body
            return body.decode()

        def metrics_complete() -> bool:
            text = metrics()
            return all(line in text for line in wanted)

        wait_until(
            metrics_complete,
            timeout=30,
            interval=0.5,
            what=f"/metrics to show {wanted}",
            diagnostics=metrics,
        )


def task_types(base: str, auth: tuple[str, str]) -> set[str]:
    status, body = http_get(f"{base}/api/task/types", auth)
    assert status == 200, body
    return set(json.loads(body)["task-types"])


def place(system: System, customer: str, token: str) -> str:
    order_id, created = system.runtime.order.place(
        validate_order(customer, items=[{"sku": "MUG-01", "qty": 1}], payment_token=token)
    )
    assert created
    return order_id
