"""Dangerous settings are refused at start-up, saying what to change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery.exceptions import ImproperlyConfigured
from pydantic import ValidationError

from app.messaging.canvas import check_canvas_settings
from config.celery import celery_config
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def start_worker(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `celery -A workers.<service> worker` until it exits (these refuse to start)."""
    celery = Path(sys.executable).parent / "celery"
    return subprocess.run(
        [str(celery), "-A", f"workers.{service}", "worker", "-Q", service, "--pool", "solo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"broker_url": "redis://h", "retry_cap_seconds": 600}, "CHECKOUT_RETRY_CAP_SECONDS"),
        (
            {"broker_url": "redis://h", "saga_deadline_seconds": 900, "saga_give_up_seconds": 1800},
            "CHECKOUT_SAGA_DEADLINE_SECONDS",
        ),
        ({"broker_url": "amqp://h", "retry_cap_seconds": 1800}, "CHECKOUT_RETRY_CAP_SECONDS"),
        (
            {"broker_url": "amqp://h", "rabbitmq_consumer_timeout_seconds": 60, "saga_deadline_seconds": 120},
            "CHECKOUT_SAGA_DEADLINE_SECONDS",
        ),
    ],
)
def test_delays_the_broker_would_not_wait_for_are_refused(overrides: dict[str, object], variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        Settings(**overrides)  # type: ignore[arg-type]


def test_the_same_delays_are_fine_where_they_are_safe() -> None:
    Settings(
        broker_url="redis://127.0.0.1",
        saga_deadline_seconds=900,
        saga_give_up_seconds=1800,
        visibility_timeout_seconds=1200,
    )
    Settings(broker_url="memory://localhost/", saga_deadline_seconds=86400, saga_give_up_seconds=172800)


def test_giving_up_must_come_after_the_deadline() -> None:
    with pytest.raises(ValidationError, match="CHECKOUT_SAGA_GIVE_UP_SECONDS"):
        Settings(saga_deadline_seconds=600, saga_give_up_seconds=300)


def test_canvas_settings_are_checked() -> None:
    conf = celery_config(Settings())

    class Conf:
        def __init__(self, **changes: object) -> None:
            self.__dict__.update({**conf, **changes})

    check_canvas_settings(Conf())
    with pytest.raises(ImproperlyConfigured, match="task_allow_error_cb_on_chord_header"):
        check_canvas_settings(Conf(task_allow_error_cb_on_chord_header=True))
    with pytest.raises(ImproperlyConfigured, match="task_acks_late"):
        check_canvas_settings(Conf(task_acks_late=False))


def test_a_worker_refuses_to_start_and_says_what_to_change(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(
        CHECKOUT_BROKER_URL="redis://127.0.0.1:6379/15",
        CHECKOUT_DATA_DIR=str(tmp_path),
        CHECKOUT_RETRY_CAP_SECONDS="900",
    )
    done = start_worker("payment", env)
    assert done.returncode != 0
    assert "CHECKOUT_RETRY_CAP_SECONDS=900 is not below CHECKOUT_VISIBILITY_TIMEOUT_SECONDS=600" in done.stderr


def test_a_worker_without_its_database_does_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(
        CHECKOUT_BROKER_URL="redis://127.0.0.1:6379/15",
        CHECKOUT_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none",
    )
    done = start_worker("inventory", env)
    assert done.returncode != 0
    assert "inventory worker not started: its database or broker is not ready" in done.stderr + done.stdout
