"""A chord whose header message is lost, on the database result backend (RabbitMQ's default).

The database backend joins the saga's chord (stock and payment, then shipping) with Celery's
``celery.chord_unlock``, which polls the header's results on the shipping queue. Here the
inventory worker is down and every ``inventory.reserve`` sent is thrown away, as a queue
lost with its node would: the sweeper re-drives the saga at its deadline, then gives up and
compensates it. The chord's header never finishes, so without a limit ``chord_unlock`` would
poll for ever, one message every 0.2 s. With the saga's limit (twice the give-up time,
:func:`app.messaging.canvas.unlock_retries`) it stops; its last act fails the chord's body,
whose error callback finds the order cancelled and does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.api import System, validate_order
from app.operations.audit import audit
from app.services.order import orders
from tests.brokers.test_faults import purge, ready, unacked
from tests.brokers.test_multiprocess import AUDIT_SETTLE, VOCABULARY, order_plan
from tests.conftest import wait_until
from tests.support.cluster import BrokerNamespace, Workers, log_text

SETTINGS: dict[str, Any] = {
    "saga_deadline_seconds": 2,
    "saga_give_up_seconds": 4,
    "sweep_interval_seconds": 1,
    "visibility_timeout_seconds": 30,
    "publish_retry_seconds": 10,
}
#: What Celery logs when ``chord_unlock`` stops polling a chord (celery/app/builtins.py).
GAVE_UP = "chord_unlock could not be retried"
TIMEOUT = 120.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(SETTINGS)


def order_row(system: System, order_id: str) -> Any:
    query = select(orders).where(orders.c.order_id == order_id)
    return system.runtime.databases["order"].query(lambda c: c.execute(query).one())


@pytest.mark.brokers
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_chord_whose_header_was_lost_stops_polling_once_the_saga_is_compensated(
    broker: BrokerNamespace,
    system: System,
    beat: Workers,
    process_env: dict[str, str],
    tmp_path: Path,
) -> None:
    workers = beat
    rt = system.runtime
    assert rt.settings.effective_result_backend.startswith("db+"), rt.settings.effective_result_backend
    workers.kill("inventory")
    ((_, args),) = order_plan(VOCABULARY[:1], orders=1)  # tok_ok
    order_id, created = rt.order.place(validate_order("lost-header", idempotency_key="lost-header", **args))
    assert created

    def lost_until_given_up() -> bool:
        # every reserve (the saga's, the sweeper's re-drives) and the release is thrown away
        # until the sweeper gives up on the saga
        if ready(broker, system, "inventory"):
            purge(broker, system, "inventory")
        row = order_row(system, order_id)
        return bool(row.saga_state == "COMPENSATING" or row.status == "CANCELLED")

    wait_until(
        lost_until_given_up,
        timeout=TIMEOUT,
        interval=0.1,
        what="the sweeper to give up on the saga",
        diagnostics=workers.tails,
    )
    workers.start("inventory", process_env, tmp_path / "worker-inventory.log", append=True)
    workers.wait_ready(rt.celery)
    wait_until(
        lambda: order_row(system, order_id).status == "CANCELLED",
        timeout=TIMEOUT,
        what=f"order {order_id} to be cancelled",
        diagnostics=workers.tails,
    )
    row = order_row(system, order_id)
    assert (row.status, row.reason) == ("CANCELLED", "deadline_exceeded"), (row.status, row.reason)

    # The chord's unlock gives up by itself ...
    wait_until(
        lambda: GAVE_UP in log_text(workers.logs["shipping"]),
        timeout=TIMEOUT,
        interval=0.5,
        what="celery.chord_unlock to stop polling the chord whose header was lost",
        diagnostics=workers.tails,
    )
    # ... and no poll of it is left on the shipping queue, waiting or held for its countdown.
    wait_until(
        lambda: ready(broker, system, "shipping") + unacked(broker, "shipping") == 0,
        timeout=TIMEOUT,
        what="the shipping queue to be empty",
        diagnostics=workers.tails,
    )
    # The body's error callback found the order over: it is still cancelled, nothing stuck.
    report = audit(rt, settle=AUDIT_SETTLE)
    assert report.clean, report.summary() + "\n" + "\n".join(report.violations)
    assert order_row(system, order_id).status == "CANCELLED"
    assert workers.exited() == {}, workers.tails()
