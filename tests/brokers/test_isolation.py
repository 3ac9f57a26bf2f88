"""The scarce-stock race at each PostgreSQL isolation level.

60 orders of one POSTER-01 each (25 in stock), placed at once from several threads, with
the four workers as separate processes on Redis, every connection at the database's
``default_transaction_isolation``. Under ``repeatable read`` and ``serializable`` the
contention surfaces as serialization failures and deadlocks; they are run again
(``Database.run``) or retried by the task, never raised to the caller. Whatever the level,
exactly the stock is sold and the stock never goes below zero.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from app.api import CONTENTION_RETRY_AFTER, System, admit_and_place, validate_order
from app.domain.commands import PlaceOrder
from app.domain.errors import Busy
from app.operations.audit import audit
from app.operations.dlq import DeadLetterOps
from app.services.inventory import stock
from tests.brokers.test_multiprocess import wait_all_terminal
from tests.support.cluster import Workers, database_name, poll_until, postgres_database

STOCK = 25
ORDERS = 60
THREADS = 12
LEVELS = ["read committed", "repeatable read", "serializable"]


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database whose every new connection runs at the level given."""
    level = request.param
    with postgres_database() as url:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(
                text(f"ALTER DATABASE \"{database_name(url)}\" SET default_transaction_isolation TO '{level}'")
            )
        engine.dispose()
        yield url


def place_racing(system: System) -> tuple[list[str], int, list[str]]:
    """Place every order from THREADS threads at once; a Busy is placed again after its
    retry_after (with its idempotency key, so never twice). (order ids, refusals, errors)."""
    ids: list[str] = []
    errors: list[str] = []
    refused = 0
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def placed(request: PlaceOrder) -> str | None:
        """The order's id once placed; None while refused as busy (placed again at the next poll)."""
        nonlocal refused
        try:
            return admit_and_place(system.runtime, request)
        except Busy:
            with lock:
                refused += 1
            return None

    def placer(k: int) -> None:
        start.wait(timeout=30)
        for n in range(k, ORDERS, THREADS):
            request = validate_order(f"race-{n}", [{"sku": "POSTER-01", "qty": 1}], idempotency_key=f"race-{n}")
            try:
                # polled at the Busy's retry_after, as a client backs off
                order_id = poll_until(
                    lambda r=request: placed(r), timeout=60, interval=CONTENTION_RETRY_AFTER, what=f"order {n}"
                )
            except Exception as exc:
                with lock:
                    errors.append(f"order {n}: {type(exc).__name__}: {exc}")
                return
            with lock:
                ids.append(order_id)

    threads = [threading.Thread(target=placer, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a placing thread is stuck"
    return ids, refused, errors


def contention_retries(workers: Workers) -> Counter[str]:
    """Transactions run again for contention, by what PostgreSQL said, across the workers."""
    found: Counter[str] = Counter()
    for path in workers.logs.values():
        for match in re.finditer(r"transaction run again after ([a-z ]+) \(attempt", path.read_text()):
            found[match.group(1)] += 1
    return found


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.parametrize("database", LEVELS, indirect=True)
def test_the_scarce_stock_race_sells_exactly_the_stock_at_each_isolation_level(
    broker: Any, database: str, system: System, workers: Workers, settings_overrides: dict[str, Any]
) -> None:
    rt = system.runtime
    level = rt.databases["inventory"].query(lambda c: c.execute(text("SHOW transaction_isolation")).scalar())
    assert level == database_level(system)

    ids, refused, errors = place_racing(system)
    assert errors == [], "placement raised to the caller:\n" + "\n".join(errors[:10])
    assert len(set(ids)) == ORDERS

    wait_all_terminal(system, ids, workers, timeout=120)
    views = [rt.order.view(order_id) for order_id in ids]
    outcomes = Counter((str(v.status), v.reason) for v in views)
    assert outcomes == Counter({("COMPLETED", None): STOCK, ("CANCELLED", "out_of_stock"): ORDERS - STOCK}), outcomes

    row = rt.databases["inventory"].query(lambda c: c.execute(select(stock).where(stock.c.sku == "POSTER-01")).one())
    assert (row.available, row.reserved, row.committed) == (0, 0, STOCK), row
    report = audit(rt, settle=10)
    assert report.clean, report.violations[:20]
    assert DeadLetterOps(rt).letters() == []
    retried = contention_retries(workers)
    print(
        f"\n[{level}] {ORDERS} orders for {STOCK} posters: {dict(outcomes)}; placements refused as busy "
        f"{refused}; transactions run again for contention in the workers: {dict(retried) or 'none'}"
    )


def database_level(system: System) -> str:
    url = system.runtime.settings.database_url
    assert url is not None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            name = database_name(url)
            setting = (
                conn.execute(
                    text(
                        "SELECT unnest(setconfig) FROM pg_db_role_setting s"
                        " JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = :name"
                    ),
                    {"name": name},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    (value,) = [s.split("=", 1)[1] for s in setting if s.startswith("default_transaction_isolation=")]
    return str(value)
