"""The outbox relay process (``python -m app relay``): a round sends what every outbox still
holds and says so; its heartbeat shows only rounds that worked; it stops on a signal and
refuses the embedded broker. (Its run as a process, under ``make up``, is in
tests/brokers/test_up.py.)"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.domain.commands import ReserveInventory
from app.domain.values import Line
from app.operations import relay
from app.persistence.outbox import Relay
from config.settings import Settings
from tests.conftest import Services


class Publisher:
    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.sent: list[tuple[str, str]] = []

    def send(self, task: str, body: dict[str, Any], *, message_id: str, correlation_id: str) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((task, body["event_type"]))


def runtime(services: Services, publisher: Publisher, tmp_path: Path) -> Any:
    """What the relay uses of a Runtime: its settings, databases and relay. The databases have
    no after-commit hook, as if the process that committed died before sending."""
    settings = Settings(
        data_dir=tmp_path,
        outbox_sweep_seconds=0.5,
        outbox_grace_seconds=0,
        relay_heartbeat_file=tmp_path / "relay.heartbeat",
    )
    return SimpleNamespace(settings=settings, databases=services.dbs, relay=Relay(services.dbs, publisher))


def reserve(services: Services, order_id: str) -> None:
    services.inventory.reserve(ReserveInventory(order_id=order_id, lines=(Line(sku="MUG-01", qty=1),)))


def test_a_round_sends_what_every_outbox_holds_and_says_so(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = Publisher()
    rt = runtime(services, publisher, tmp_path)
    reserve(services, "o-1")
    reserve(services, "o-2")
    with caplog.at_level(logging.INFO, logger="checkout.relay"):
        done = relay.sweep_once(rt)
    assert done.sent == {"inventory": 2} and done.complete
    assert publisher.sent == [("order.record", "InventoryReserved")] * 2
    assert services.dbs["inventory"].unpublished(0) == []
    assert "sent 2 event(s) of inventory left in its outbox: InventoryReserved x2" in caplog.messages
    assert relay.sweep_once(rt).sent == {}  # nothing left the second time


def test_a_round_with_the_broker_away_leaves_the_events_and_no_heartbeat(services: Services, tmp_path: Path) -> None:
    rt = runtime(services, Publisher(down=True), tmp_path)
    reserve(services, "o-1")
    stop = threading.Event()
    stop.set()  # one round, then stop
    relay.serve(rt, stop)
    assert len(services.dbs["inventory"].unpublished(0)) == 1
    assert not rt.settings.relay_heartbeat_file.exists()
    assert relay.check(rt.settings) == (
        False,
        f"{rt.settings.relay_heartbeat_file} does not exist: the relay has not completed a round",
    )


def test_the_heartbeat_is_fresh_after_a_round_and_stale_three_rounds_later(services: Services, tmp_path: Path) -> None:
    rt = runtime(services, Publisher(), tmp_path)
    reserve(services, "o-1")
    stop = threading.Event()
    stop.set()
    relay.serve(rt, stop)
    heartbeat = rt.settings.relay_heartbeat_file
    ok, detail = relay.check(rt.settings)
    assert ok, detail
    limit = relay.MISSED_ROUNDS * rt.settings.outbox_sweep_seconds + relay.SLACK_SECONDS
    old = time.time() - limit - 1
    os.utime(heartbeat, (old, old))
    ok, detail = relay.check(rt.settings)
    assert not ok and "no complete round" in detail, detail
    assert relay.check(Settings()) == (
        False,
        "CHECKOUT_RELAY_HEARTBEAT_FILE is not set, so the relay keeps no heartbeat",
    )


@pytest.mark.timeout(10)
def test_sigterm_and_sigint_stop_it_and_the_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with relay.stop_on_signals() as stop:
            os.kill(os.getpid(), sig)
            assert stop.wait(5), signal.Signals(sig).name
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_embedded_broker_is_refused() -> None:
    with pytest.raises(SystemExit, match="relay not started: CHECKOUT_BROKER_URL is the in-process memory://"):
        relay.main(Settings(), lambda _: pytest.fail("no system is built for a broker nobody can reach"))
