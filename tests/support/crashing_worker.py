"""The payment worker with one task more, ``payment.crash``: a poison message for the
broker tests.

Every run of ``payment.crash`` kills its own pool process with SIGKILL — what a segfault in
a C extension or the kernel's OOM killer does to a worker — so the message is never
acknowledged: the worker (``task_reject_on_worker_lost``) hands it back to its queue, and
the next delivery kills the next pool process. Before dying, each run appends a line to
the file named by ``SAGA_TEST_CRASH_LOG``: the task id and the delivery's
``x-delivery-count`` (how often a quorum queue has had it back; none on a first delivery
or on a classic queue).

``celery -A tests.support.crashing_worker worker -Q payment`` — see
``tests/brokers/test_quorum_queues.py``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import Task

from app.bootstrap import worker_app

#: Environment variable naming the file each run appends to.
CRASH_LOG = "SAGA_TEST_CRASH_LOG"
TASK = "payment.crash"

app = worker_app("payment")


@app.task(name=TASK, bind=True, shared=False)
def crash(self: Task, body: Any) -> None:
    count = vars(self.request).get("x-delivery-count")
    with open(os.environ[CRASH_LOG], "a", encoding="utf-8") as log:
        log.write(f"{self.request.id} {count if count is not None else 0}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def crash_runs(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(task id, delivery count) of every run so far, in order."""
    try:
        with open(path, encoding="utf-8") as log:
            return [(line.split()[0], int(line.split()[1])) for line in log if line.strip()]
    except FileNotFoundError:
        return []
