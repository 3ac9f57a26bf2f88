"""Admission control at the front door: over capacity, ``place_order`` and ``python -m app
place`` refuse with ``app.Busy`` and write nothing; the metrics show the decision."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

import app
import app.api
from app.api import System
from app.operations.metrics import exposition
from app.persistence.db import utcnow
from app.services.order import orders
from config.settings import Settings
from tests.conftest import memory_queue_depth, purge_memory_broker

ROOT = Path(__file__).resolve().parents[2]

#: A tiny system's limits: refused once two sagas have waited over a second, measured afresh
#: at every placement.
ADMISSION = {"admission_target_seconds": 1, "admission_min_in_flight": 2, "admission_refresh_seconds": 0}


@pytest.fixture
def stalled(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """A system whose workers are not running: the orders placed stay in flight."""
    purge_memory_broker()
    system = System(settings.model_copy(update=ADMISSION))
    system.runtime.prepare()
    monkeypatch.setattr(app.api, "_system", system)
    yield system
    system.runtime.close()
    purge_memory_broker()


def order_count(system: System) -> int:
    db = system.runtime.databases["order"]
    return int(db.query(lambda c: c.execute(select(func.count()).select_from(orders)).scalar_one()))


def age_everything(system: System, seconds: float) -> None:
    past = utcnow() - timedelta(seconds=seconds)
    system.runtime.databases["order"].run(lambda uow: uow.conn.execute(update(orders).values(created_at=past)))


def samples(system: System) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(exposition(system.runtime)) for s in f.samples}


@pytest.mark.timeout(120)
def test_over_capacity_orders_are_refused_and_nothing_is_written(stalled: System) -> None:
    mug = [{"sku": "MUG-01", "qty": 1}]
    first = app.place_order("c-1", mug, idempotency_key="key-1")
    app.place_order("c-2", mug)
    assert order_count(stalled) == 2  # two in flight, both just placed: no backlog yet
    age_everything(stalled, 30)  # ... and now they have waited 30 s with nothing finishing

    queued = memory_queue_depth("order")
    with pytest.raises(app.Busy) as refused:
        app.place_order("c-3", mug)
    assert refused.value.retry_after >= 1
    assert "backlog 30" in refused.value.signal and "2 sagas in flight" in refused.value.signal
    assert order_count(stalled) == 2 and memory_queue_depth("order") == queued  # nothing written or enqueued

    # a retry of an order placed before returns it, busy or not: it adds no work
    assert app.place_order("c-1", mug, idempotency_key="key-1") == first
    with pytest.raises(app.Busy):
        app.place_order("c-4", mug, idempotency_key="key-4")
    assert order_count(stalled) == 2

    with pytest.raises(app.Busy):  # a measurement records the refusals before it
        app.place_order("c-5", mug)
    metrics = samples(stalled)
    assert metrics["checkout_admission_refused_total"] == 3
    assert metrics["checkout_admission_admitted_total"] == 2
    assert metrics["checkout_admission_backlog_seconds"] >= 30
    assert metrics["checkout_admission_target_seconds"] == 1

    # the command line says so in one line, with its own exit status
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update({f"CHECKOUT_{name.upper()}": str(value) for name, value in ADMISSION.items()})
    env["CHECKOUT_DATA_DIR"] = str(stalled.runtime.settings.data_dir)
    env["CHECKOUT_SWEEP_INTERVAL_SECONDS"] = "3600"  # this process only places (and is refused)
    done = subprocess.run(
        [sys.executable, "-m", "app", "place", "MUG-01:1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("not placed: the system is busy: backlog"), done.stderr
    assert "try again in" in lines[0] and "Traceback" not in done.stderr
    assert order_count(stalled) == 2
