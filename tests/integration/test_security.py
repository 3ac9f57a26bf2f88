"""Message signing on the real embedded system (in-process workers), in both saga modes.

With ``CHECKOUT_SIGNING=on`` every row of the test vocabulary still ends as it should —
chords, chains, error callbacks, retries, the relay's events and the result store all go
through the auth serializer — and so does the largest order the API accepts, signed,
under the default message size limit. A ``payment.refund`` published straight onto the
broker, unsigned or signed with a forger's key, is dead-lettered and refunds nothing; the
same message signed with the system's key does refund (so the refusal is the signature's).
The same on Redis and RabbitMQ, with worker processes: ``tests/brokers/test_security.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

import app
from app.adapters.fake_gateway import ledger
from app.api import System
from app.messaging.consumer import FORGED
from app.operations.audit import audit
from app.persistence.deadletters import DeadLetter
from config.settings import Settings
from tests.conftest import wait_until
from tests.integration.test_vocabulary import ROWS
from tests.support.signing import Signer, cert_store, make_signer, publish, signing_overrides, task_message


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path / "keys", "system")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, signer: Signer) -> Settings:
    """The suite's embedded settings, signing on."""
    store = cert_store(tmp_path / "trusted", signer)
    return Settings(**(settings.model_dump(exclude_unset=True) | signing_overrides(signer, store)))


@pytest.mark.timeout(120)
def test_every_vocabulary_row_ends_as_expected_with_signing_on(api: System) -> None:
    assert api.runtime.celery.conf.accept_content == ["auth"]
    placed = []
    for n, (label, kwargs, status, reason, _present, _absent) in enumerate(ROWS):
        args = {"items": [{"sku": "MUG-01", "qty": 1}], **kwargs}
        placed.append((label, app.place_order(f"signed-{n}", **args), status, reason))
    for label, order_id, status, reason in placed:
        view = app.wait_for_order(order_id, timeout=60)
        assert (view.status, view.reason) == (status, reason), label
    report = audit(api.runtime, settle=20)
    assert report.clean, report.violations
    # the only dead letter is tok_down's exhausted authorization: nothing was refused as unsigned
    letters = api.runtime.dead_letters.find()
    assert [(d.queue, d.reason) for d in letters] == [("payment", "retries exhausted (5): payment_unavailable")]


@pytest.mark.timeout(120)
def test_an_order_of_100_lines_completes_under_the_message_size_limit_when_signed(api: System) -> None:
    """As big as the catalog allows: 100 lines (each SKU at most 1000 units in all), every
    field at its longest. (The bound for any SKUs: tests/unit/test_security.py.)"""
    address = {"name": "N" * 100, "line1": "L" * 200, "city": "C" * 100, "postal_code": "P" * 20, "country": "FR"}
    items = [{"sku": sku, "qty": 40} for sku in ("MUG-01", "TEE-01", "BOOK-01", "LAMP-01") for _ in range(25)]
    order_id = app.place_order("c" * 64, items, ship_to=address, idempotency_key="k" * 128)
    view = app.wait_for_order(order_id, timeout=60)
    assert view.status == "COMPLETED", (view.status, view.reason)
    assert api.runtime.dead_letters.find() == []


def ledger_operations(system: System, order_id: str) -> set[str]:
    rows = system.runtime.databases["payment"].query(
        lambda c: c.execute(select(ledger.c.operation).where(ledger.c.reference == order_id)).all()
    )
    return {r.operation for r in rows}


def forged_letters(system: System) -> dict[str, DeadLetter]:
    return {d.message_key: d for d in system.runtime.dead_letters.find() if d.reason.startswith(FORGED)}


@pytest.mark.timeout(120)
def test_an_unsigned_or_forged_refund_is_dead_lettered_and_refunds_nothing(
    api: System, signer: Signer, tmp_path: Path
) -> None:
    rt = api.runtime
    order_id = app.place_order("victim", [{"sku": "MUG-01", "qty": 1}])
    assert app.wait_for_order(order_id, timeout=60).status == "COMPLETED"
    assert ledger_operations(api, order_id) == {"authorize", "capture"}

    impostor = make_signer(tmp_path / "forger", "impostor", serial=signer.serial, issuer="checkout system")
    sent = [
        task_message(rt.celery, "payment.refund", {"order_id": order_id}),
        task_message(rt.celery, "payment.refund", {"order_id": order_id}, impostor),
        task_message(rt.celery, "payment.capture", {"order_id": order_id}, make_signer(tmp_path / "forger", "x")),
    ]
    for message in sent:
        publish(rt.celery, message, "payment.task")
    letters = wait_until(
        lambda: found if len(found := forged_letters(api)) >= len(sent) else None,
        timeout=30,
        what="the forged messages' dead letters",
    )
    assert set(letters) == {m.task_id for m in sent}
    for message in sent:
        letter = letters[message.task_id]
        assert (letter.queue, letter.task) == ("payment", message.headers["task"]), letter
    assert ledger_operations(api, order_id) == {"authorize", "capture"}, "a forged message refunded"
    assert app.get_order(order_id).status == "COMPLETED"

    # The workers go on, and the very same refund signed with the system's key is obeyed.
    other = app.place_order("control", [{"sku": "MUG-01", "qty": 1}])
    assert app.wait_for_order(other, timeout=60).status == "COMPLETED"
    publish(rt.celery, task_message(rt.celery, "payment.refund", {"order_id": other}, signer), "payment.task")
    wait_until(lambda: "refund" in ledger_operations(api, other), timeout=30, what="the signed refund")
    assert ledger_operations(api, order_id) == {"authorize", "capture"}
