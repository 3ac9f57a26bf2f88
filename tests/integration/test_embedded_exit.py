"""A script that places an order embedded and just ends: the in-process workers are stopped
while Python's thread pools still take work, so a message delivered in the last moment is
run (or given back), never refused for want of a thread and taken for a bad message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cluster import REPO_ROOT

SCRIPT = """
import concurrent.futures.thread as pools
import app
from app import api

seen = []
original = api.System.stop

def stop(self):
    seen.append(pools._shutdown)
    original(self)

api.System.stop = stop
order_id = app.place_order("exit-1", [{"sku": "MUG-01", "qty": 1}])
print(app.wait_for_order(order_id).status, flush=True)

import atexit
atexit.register(lambda: print("pools already shut when stopped:", seen, flush=True))
"""


@pytest.mark.timeout(120)
def test_the_embedded_workers_stop_before_the_thread_pools(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "COMPLETED" in done.stdout, done.stdout
    assert "pools already shut when stopped: [False]" in done.stdout, done.stdout + done.stderr
