"""The worker's heartbeat events (``worker-heartbeat``, which Flower and ``celery inspect``
go by), sent from a thread of their own, on a connection of their own.

Celery sends them from the consumer's event loop, every 2 s, retrying without limit. On a
broker connection that stays open and carries nothing (a partition, a dead NAT entry) the
send blocks the loop until the broker answers again: the AMQP heartbeat check and kombu's
Redis health checks, which run on that loop and are there to notice exactly this, cannot
run, so the worker noticed only after the partition had healed. Here the sends run in a
timer thread: a blocked send holds up nothing but the next heartbeat, and its retries are
bounded so that it gives up and reconnects.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.utils.sysinfo import load_average
from celery.utils.timer2 import Timer
from celery.worker import heartbeat
from celery.worker.consumer.heart import Heart as CeleryHeart
from celery.worker.state import SOFTWARE_INFO, active_requests, all_total_count

log = logging.getLogger(__name__)

#: A heartbeat that cannot be sent is tried again this often, then given up: the next one
#: comes ``interval`` later anyway.
SEND_RETRY_POLICY: dict[str, Any] = {"max_retries": 2, "interval_start": 0, "interval_step": 1, "interval_max": 1}


class ThreadedHeart(heartbeat.Heart):  # type: ignore[misc]
    def start(self) -> None:
        if self.eventer.enabled:  # "online" too from the thread: nothing is sent from the loop
            self.timer.call_after(0, self._send, ("worker-online",))
            self.tref = self.timer.call_repeatedly(self.interval, self._send, ("worker-heartbeat",))

    def _send(self, event: str, retry: bool = True) -> Any:
        if self._send_sent_signal is not None:
            self._send_sent_signal(sender=self)
        try:
            return self.eventer.send(
                event,
                freq=self.interval,
                active=len(active_requests),
                processed=all_total_count[0],
                loadavg=load_average(),
                retry=retry,
                retry_policy=SEND_RETRY_POLICY,
                **SOFTWARE_INFO,
            )
        except Exception as exc:  # the broker is away: the next heartbeat tries again
            log.warning("worker heartbeat event not sent: %r", exc)
            return None


class Heart(CeleryHeart):  # type: ignore[misc]
    """Celery's ``Heart`` step, with the sends in a thread (see the module)."""

    def start(self, c: Any) -> None:
        self.timer = Timer()
        dispatcher = c.event_dispatcher
        self.dispatcher = c.app.events.Dispatcher(
            c.app.connection_for_write(),
            hostname=c.hostname,
            enabled=dispatcher.enabled,
            groups=dispatcher.groups,
        )
        c.heart = ThreadedHeart(self.timer, self.dispatcher, self.heartbeat_interval)
        c.heart.start()

    def stop(self, c: Any) -> None:
        timer = getattr(self, "timer", None)
        if timer is not None:  # first: no heartbeat in flight when the last one is sent
            timer.stop()
            self.timer = None
        if c.heart is not None:
            c.heart.stop()
            c.heart = None
        dispatcher = getattr(self, "dispatcher", None)
        if dispatcher is not None:
            try:
                dispatcher.close()
                dispatcher.connection.release()
            except Exception:  # the broker is away: nothing left to close cleanly
                pass
            self.dispatcher = None

    shutdown = stop
