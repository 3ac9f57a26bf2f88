"""The outbox relay as a process of its own: ``python -m app relay``.

Every state change writes its events to its service's outbox in the same transaction, and
the process that committed sends them right after (:class:`app.persistence.outbox.Relay`). What that
process could not send — it died between the commit and the send, or the broker was away —
stays in the outbox. This process sweeps every service's outbox every
``CHECKOUT_OUTBOX_SWEEP_SECONDS`` and sends the events older than
``CHECKOUT_OUTBOX_GRACE_SECONDS`` (younger ones may still be on their way), logging what
it sent.

Service workers sweep their own outbox too unless ``CHECKOUT_WORKER_OUTBOX_SWEEP=false``.
Where this process runs, turn theirs off: then one poller serves every outbox however many
workers run, instead of every worker replica polling (and racing to send) the same rows.
Sending an event twice is harmless — consumers are idempotent by event id — so a second
relay, or a worker still sweeping, costs only duplicates.

After each round that worked — every outbox read, everything found sent — it touches
``CHECKOUT_RELAY_HEARTBEAT_FILE`` if set; ``python -m app relay --check`` exits 1 once that
file is :data:`MISSED_ROUNDS` rounds old (plus slack), which is the relay's container
healthcheck: a relay that hangs, or cannot reach its databases or the broker, turns unhealthy.

It stops after the round in progress on SIGTERM or SIGINT, exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from app.messaging import tracing
from config.settings import SERVICES, Settings

if TYPE_CHECKING:
    from app.operations.system import System

log = logging.getLogger("checkout.relay")

#: The heartbeat is stale once this many rounds passed without one ...
MISSED_ROUNDS = 3
#: ... plus this long, for a slow round (a database or broker answering late).
SLACK_SECONDS = 10.0


@dataclass
class Round:
    """What one sweep of every outbox did."""

    sent: dict[str, int] = field(default_factory=dict)  # service -> events sent
    complete: bool = True  # every outbox read, and everything found in them sent


def sweep_once(rt: System) -> Round:
    """Send every service's events left in its outbox (see the module's docstring)."""
    grace = rt.settings.outbox_grace_seconds
    result = Round()
    for service in SERVICES:
        try:
            pending = rt.databases[service].unpublished(grace)
        except Exception:  # the database is away: the next round tries again
            log.warning("could not read the %s outbox; trying again next round", service, exc_info=True)
            result.complete = False
            continue
        if not pending:
            continue
        sent = rt.relay.send(service, pending)  # logs a warning itself when it cannot send
        result.sent[service] = sent
        if sent < len(pending):
            result.complete = False
        if sent:
            kinds = Counter(env.event_type for env in pending[:sent])
            log.info(
                "sent %d event(s) of %s left in its outbox: %s",
                sent,
                service,
                ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items())),
            )
    return result


def serve(rt: System, stop: threading.Event) -> None:
    """Sweep every outbox now and then every CHECKOUT_OUTBOX_SWEEP_SECONDS until ``stop`` is
    set, touching the relay's heartbeat after each complete round."""
    settings = rt.settings
    log.info(
        "sweeping the outboxes of %s every %gs (events older than %gs)",
        ", ".join(SERVICES),
        settings.outbox_sweep_seconds,
        settings.outbox_grace_seconds,
    )
    while True:
        done = sweep_once(rt)
        if done.complete and settings.relay_heartbeat_file is not None:
            try:
                settings.relay_heartbeat_file.touch()
            except OSError:  # the healthcheck will report the stale heartbeat
                log.warning("could not touch %s", settings.relay_heartbeat_file, exc_info=True)
        if stop.wait(settings.outbox_sweep_seconds):
            break
    log.info("stopped")


def check(settings: Settings, now: float | None = None) -> tuple[bool, str]:
    """Whether the relay's heartbeat is fresh, and what it says (``python -m app relay --check``)."""
    where = settings.relay_heartbeat_file
    if where is None:
        return False, "CHECKOUT_RELAY_HEARTBEAT_FILE is not set, so the relay keeps no heartbeat"
    try:
        age = (time.time() if now is None else now) - where.stat().st_mtime
    except FileNotFoundError:
        return False, f"{where} does not exist: the relay has not completed a round"
    every = settings.outbox_sweep_seconds
    limit = MISSED_ROUNDS * every + SLACK_SECONDS
    if age > limit:
        return False, f"{where} is {age:.1f}s old: no complete round for {age:.0f}s (a round every {every:g}s)"
    return True, f"{where} is {age:.1f}s old (a round every {every:g}s)"


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT (the previous handlers are restored on exit)."""
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received, stopping after this round", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(settings: Settings, make_system: Callable[[Settings], System], once: bool = False) -> int:
    """``python -m app relay``: refuse the embedded broker, build the system
    (``make_system``: the composition root's), prepare, then serve (or one round)."""
    if settings.embedded:
        raise SystemExit(
            "relay not started: CHECKOUT_BROKER_URL is the in-process memory:// broker, which no other "
            "process can reach (embedded, each process sweeps its own outboxes); set it to the Redis or "
            "RabbitMQ the workers use"
        )
    rt = make_system(settings)
    tracing.install("checkout-relay", settings.trace_file)  # what it sends joins each event's trace
    try:
        try:
            rt.prepare()
            rt.declare_queues()  # an event sent before any worker declared its queue would be dropped
        except Exception as exc:
            raise SystemExit(
                f"relay not started: its database or broker is not ready ({exc}). "
                "Check CHECKOUT_DATABASE_URL / CHECKOUT_BROKER_URL and that the server is up."
            ) from exc
        if once:
            done = sweep_once(rt)
            print(f"relay: {sum(done.sent.values())} event(s) sent" + ("" if done.complete else "; some left"))
            return 0 if done.complete else 1
        with stop_on_signals() as stop:
            serve(rt, stop)
        return 0
    finally:
        rt.close()
