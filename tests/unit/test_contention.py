"""A transaction the database gives up on for contention (a PostgreSQL serialization failure
or deadlock, under ``repeatable read`` or ``serializable``) is run again; placement that
loses every time says Busy, with nothing written. The race itself, at each isolation
level on a real PostgreSQL, is tests/brokers/test_isolation.py."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app.api import admit_and_place, validate_order
from app.bootstrap import Runtime
from app.domain.errors import Busy
from app.persistence.db import CONTENTION_ATTEMPTS, UnitOfWork
from app.services.order import orders
from tests.conftest import Services


class SerializationFailure(Exception):
    """What psycopg raises for SQLSTATE 40001."""

    sqlstate = "40001"


class DeadlockDetected(Exception):
    sqlstate = "40P01"


class UndefinedTable(Exception):
    sqlstate = "42P01"


def failing(
    times: int, error: type[Exception], message: str = "could not serialize access"
) -> tuple[list[int], object]:
    calls: list[int] = []

    def work(uow: UnitOfWork) -> str:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("UPDATE inventory_stock ...", {}, error(message))
        return "committed"

    return calls, work


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [SerializationFailure, DeadlockDetected])
def test_a_transaction_lost_to_contention_is_run_again_until_it_commits(
    services: Services, error: type[Exception]
) -> None:
    calls, work = failing(CONTENTION_ATTEMPTS - 1, error)
    assert services.dbs["inventory"].run(work) == "committed"  # type: ignore[arg-type]
    assert len(calls) == CONTENTION_ATTEMPTS


@pytest.mark.timeout(30)
def test_past_its_attempts_the_contention_is_raised_and_other_errors_at_once(services: Services) -> None:
    calls, work = failing(CONTENTION_ATTEMPTS, SerializationFailure)
    with pytest.raises(OperationalError):
        services.dbs["inventory"].run(work)  # type: ignore[arg-type]
    assert len(calls) == CONTENTION_ATTEMPTS
    calls, work = failing(1, UndefinedTable, 'relation "inventory_stock" does not exist')
    with pytest.raises(OperationalError):
        services.dbs["inventory"].run(work)  # type: ignore[arg-type]
    assert len(calls) == 1


@pytest.mark.timeout(30)
def test_placement_that_loses_to_contention_every_time_is_refused_as_busy(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def contended(*_args: object) -> object:
        raise OperationalError("INSERT INTO order_orders ...", {}, SerializationFailure("could not serialize access"))

    monkeypatch.setattr(rt.order, "place", contended)
    with pytest.raises(Busy) as refused:
        admit_and_place(rt, validate_order("c", [{"sku": "MUG-01", "qty": 1}]))
    assert refused.value.retry_after == 1.0
    assert "contended" in str(refused.value)
    written = rt.databases["order"].query(lambda c: c.execute(select(func.count()).select_from(orders)).scalar())
    assert written == 0


@pytest.mark.timeout(30)
def test_a_read_cancelled_for_contention_is_run_again(services: Services) -> None:
    """At ``serializable`` a read-only transaction can be the one cancelled ("canceled on
    conflict out to pivot, during read"): a read is run again like a write."""
    calls, work = failing(CONTENTION_ATTEMPTS - 1, SerializationFailure)
    assert services.dbs["order"].query(work) == "committed"  # type: ignore[arg-type]
    assert len(calls) == CONTENTION_ATTEMPTS
    other_calls, other = failing(1, UndefinedTable, "no such table")
    with pytest.raises(OperationalError):
        services.dbs["order"].query(other)  # type: ignore[arg-type]
    assert len(other_calls) == 1
