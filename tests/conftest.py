"""Fixtures shared by the whole suite.

* ``settings``: embedded settings over a fresh SQLite file, with short retry delays.
* ``dbs`` / ``services``: the services over their databases, with no broker at all.
* ``system``: the real embedded system (in-process Celery workers on ``memory://``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kombu import Producer
from kombu.transport import memory

from app.adapters.fake_carrier import FakeCarrier
from app.adapters.fake_gateway import FakePaymentGateway
from app.api import System
from app.bootstrap import SERVICE_MODULES, Runtime
from app.domain.catalog import CATALOG
from app.persistence.db import Database, make_engine
from app.services.inventory import InventoryService
from app.services.order import OrderService
from app.services.payment import PaymentService
from app.services.shipping import ShippingService
from config.celery import EXCHANGE
from config.settings import SERVICES, Settings
from tests.support.cluster import WaitTimeout, poll_until

T = TypeVar("T")


@pytest.fixture
def saga_mode() -> str:
    """The saga mode of the system under test: orchestration, unless a conftest or a test
    parametrizes ``saga_mode`` (the integration tests run in both)."""
    return "orchestration"


@pytest.fixture
def settings(tmp_path: Path, saga_mode: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        retry_base_seconds=0.05,
        retry_cap_seconds=0.4,
        outbox_sweep_seconds=0.5,
        outbox_grace_seconds=0.5,
        saga_mode=saga_mode,
    )


@dataclass
class Services:
    dbs: dict[str, Database]
    gateway: FakePaymentGateway
    order: OrderService
    inventory: InventoryService
    payment: PaymentService
    shipping: ShippingService


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """The four services over one SQLite file, wired with no Celery and no relay."""
    engine = make_engine(f"sqlite:///{tmp_path / 'unit.db'}")
    dbs = {s: Database(s, engine, SERVICE_MODULES[s].metadata, SERVICE_MODULES[s].tables) for s in SERVICES}
    for db in dbs.values():
        db.create_schema()
    gateway = FakePaymentGateway(engine)
    gateway.create_schema()
    carrier = FakeCarrier(engine)
    carrier.create_schema()
    svc = Services(
        dbs=dbs,
        gateway=gateway,
        order=OrderService(dbs["order"]),
        inventory=InventoryService(dbs["inventory"]),
        payment=PaymentService(dbs["payment"], gateway),
        shipping=ShippingService(dbs["shipping"], carrier),
    )
    svc.order.seed()
    svc.inventory.seed({p.sku: p.initial_stock for p in CATALOG})
    yield svc
    engine.dispose()


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    """A prepared runtime on the memory broker (its queues empty before and after), with no
    worker: tasks run eagerly with ``Task.apply``, placements stay queued."""
    purge_memory_broker()
    runtime = Runtime(settings)
    runtime.prepare()
    yield runtime
    runtime.close()
    purge_memory_broker()


def purge_memory_broker() -> None:
    """kombu's memory transport is process-wide: drop what an earlier system left in it."""
    for queue in list(memory.Channel.queues.values()):
        with queue.mutex:
            queue.queue.clear()


def memory_queue_depth(name: str) -> int:
    queue = memory.Channel.queues.get(name)
    return 0 if queue is None else queue.qsize()


@pytest.fixture
def system(settings: Settings) -> Iterator[System]:
    purge_memory_broker()
    running = System(settings).start()
    yield running
    running.stop()
    purge_memory_broker()


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    what: str = "condition",
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy (see
    :func:`tests.support.cluster.poll_until`); fail the test when ``timeout`` passes."""
    try:
        return poll_until(condition, timeout=timeout, interval=interval, what=what, diagnostics=diagnostics)
    except WaitTimeout as exc:
        pytest.fail(str(exc), pytrace=False)


def publish_raw(system: System, body: bytes, headers: dict[str, Any], routing_key: str) -> None:
    """Publish as a foreign or broken producer would: straight onto the exchange, no Celery."""
    with system.runtime.celery.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=EXCHANGE,
            routing_key=routing_key,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            declare=[EXCHANGE],
            retry=True,
        )
