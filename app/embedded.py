"""Embedded mode: the whole system in one process.

One in-process Celery worker per service queue (threads pool) on kombu's ``memory://``
transport, SQLite, and threads that sweep the outboxes and overdue sagas. The workers are real asynchronous Celery
workers — same tasks, queues and canvases as in production — only the transport is
in-process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.worker import WorkController
from celery.worker import state as worker_state
from kombu.transport import memory

from app.bootstrap import Runtime
from app.operations.logs import quiet_expected_failures
from app.operations.sweeper import redrive_overdue
from app.persistence.outbox import Every, outbox_sweeper
from config.settings import SERVICES

log = logging.getLogger("checkout.embedded")


class _Worker(WorkController):  # type: ignore[misc]
    """A worker that says when it is ready to consume."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class EmbeddedWorkers:
    """Start and stop the in-process workers of every service."""

    def __init__(self, rt: Runtime, pool: str = "threads") -> None:
        self.pool = pool
        if not rt.settings.embedded:
            raise RuntimeError("embedded workers need CHECKOUT_BROKER_URL=memory://")
        self.rt = rt
        self.workers: list[tuple[_Worker, threading.Thread]] = []
        settings = rt.settings
        #: a worker per queue: the four services', then each extension's
        self.queues = settings.queues
        # the jobs that Celery beat and each worker's timer do in multi-process mode
        self.sweepers: list[Every] = [
            outbox_sweeper(rt.relay, SERVICES, settings.outbox_sweep_seconds, settings.outbox_grace_seconds),
            Every("saga-sweeper", settings.sweep_interval_seconds, lambda: redrive_overdue(rt, rt.celery)),
        ]

    def start(self, timeout: float = 30.0) -> None:
        quiet_expected_failures()
        self.rt.prepare()
        app = self.rt.celery
        # Celery runs tasks of in-process workers through the process's current app, so the
        # four workers share one app; each takes its queue selection as its consumer starts.
        app.set_current()
        app.set_default()
        app.finalize()
        queues = app.amqp.queues
        try:
            for service in self.queues:
                queues.select([service])
                worker = _Worker(
                    app=app,
                    hostname=f"{service}@embedded",
                    pool=self.pool,
                    concurrency=self.rt.settings.embedded_concurrency,
                    loglevel=self.rt.settings.log_level,
                    without_heartbeat=True,
                    without_mingle=True,
                    without_gossip=True,
                    ready_callback=None,
                )
                thread = threading.Thread(target=worker.start, name=f"worker-{service}", daemon=True)
                thread.start()
                self.workers.append((worker, thread))
                if not worker.ready.wait(timeout):
                    raise RuntimeError(f"embedded worker {worker.hostname} did not start within {timeout}s")
        finally:
            queues.select(list(self.queues))
        for sweeper in self.sweepers:
            sweeper.start()

    def wait_idle(self, timeout: float = 60.0, settle: float = 0.3) -> bool:
        """Wait until no message waits in a service queue and no task is held, waiting out
        a retry delay or running — and it stays so for ``settle`` seconds, since a task may
        send more. Returns False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = (
                any(queue.qsize() for name, queue in list(memory.Channel.queues.items()) if name in self.queues)
                or len(worker_state.reserved_requests)
                or len(worker_state.active_requests)
                or len(worker_state.scheduled_requests)
            )
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= settle:
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        for sweeper in self.sweepers:
            sweeper.stop()
        if not self.workers:
            return
        worker_state.should_terminate = 0
        for worker, _ in self.workers:
            worker.stop(in_sighandler=False)
        for _, thread in self.workers:
            thread.join(timeout)
        worker_state.should_terminate = None
        self.workers.clear()
