"""``python -m app replay`` against real worker processes on Redis with PostgreSQL: the
command only sends; the order worker handles what it sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete

from app.api import System, validate_order
from app.operations.audit import audit
from app.persistence.db import UnitOfWork
from app.services.order import timeline
from tests.conftest import wait_until
from tests.support.cluster import Workers

ROOT = Path(__file__).resolve().parents[2]


def story(system: System, order_id: str) -> list[str]:
    return [e.type for e in system.runtime.order.view(order_id).events]


@pytest.mark.brokers
@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_replay_through_the_order_worker_restores_a_forgotten_timeline(
    system: System, workers: Workers, process_env: dict[str, str]
) -> None:
    rt = system.runtime
    order_id, _ = rt.order.place(validate_order("replay-1", [{"sku": "MUG-01", "qty": 1}]))
    wait_until(lambda: audit(rt).clean and rt.order.status(order_id) == "COMPLETED", timeout=60, what="the order")
    before = story(system, order_id)
    ids = [env.event_id for s in ("inventory", "payment", "shipping") for env in rt.databases[s].log(order_id)]
    assert len(ids) == 5
    order_db = rt.databases["order"]
    inbox = order_db.tables.inbox

    def forget(uow: UnitOfWork) -> None:
        uow.conn.execute(delete(timeline).where(timeline.c.event_id.in_(ids)))
        uow.conn.execute(delete(inbox).where(inbox.c.consumer == "order.record", inbox.c.event_id.in_(ids)))

    order_db.run(forget)
    assert story(system, order_id) == ["OrderPlaced", "OrderCompleted"]

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "replay", *args],
            cwd=ROOT,
            env=process_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = replay("--order", order_id, "--to", "order.record")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("5 events sent to order.record"), done.stdout
    wait_until(
        lambda: story(system, order_id) == before,
        timeout=30,
        what="the order worker to record the replayed events",
        diagnostics=workers.tails,
    )
    rebuilt = replay("--rebuild", "orders")
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("consistent: 1 orders"), rebuilt.stdout
