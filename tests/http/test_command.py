"""``python -m app api`` as an operator runs it: embedded by default (an order placed over
HTTP completes, no server needed), on 127.0.0.1, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.support.cluster import REPO_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(90)
def test_the_api_command_serves_embedded_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env["CHECKOUT_DATA_DIR"] = str(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "api", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or answers(f"{base}/health"), timeout=60, what="the API")
        assert process.poll() is None, process.communicate()[0]
        placed = httpx.post(f"{base}/orders", json={"customer_id": "cli-http", "items": [{"sku": "MUG-01", "qty": 1}]})
        assert placed.status_code == 201, placed.text

        def completed() -> bool:
            return httpx.get(f"{base}{placed.headers['location']}").json()["status"] == "COMPLETED"

        wait_until(completed, timeout=30, what="the order to complete on the embedded workers")
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "Traceback" not in output
