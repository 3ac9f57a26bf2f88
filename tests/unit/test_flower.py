"""``python -m app.operations.flower`` refuses to start without what keeps Flower closed, and puts
Flower's ``/metrics`` behind its basic auth. (Flower running for real: tests/brokers.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flower import urls
from flower.views.monitor import Healthcheck, Metrics
from pydantic import ValidationError

from app.operations.flower import METRICS_ROUTE, AuthenticatedMetrics, protect_metrics
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: A Redis nobody listens on: every refusal below comes before any connection.
NO_REDIS = "redis://127.0.0.1:1/0"


def run_flower(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "FLOWER_"))}
    return subprocess.run(
        [sys.executable, "-m", "app.operations.flower"],
        cwd=ROOT,
        env=env | variables,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"CHECKOUT_BROKER_URL": NO_REDIS}, "set CHECKOUT_FLOWER_USER and CHECKOUT_FLOWER_PASSWORD"),
        (
            {"CHECKOUT_BROKER_URL": NO_REDIS, "CHECKOUT_FLOWER_USER": "ops"},
            "set CHECKOUT_FLOWER_USER and CHECKOUT_FLOWER_PASSWORD",
        ),
        (
            {"CHECKOUT_BROKER_URL": NO_REDIS, "FLOWER_BASIC_AUTH": "ops:secret"},
            "set CHECKOUT_FLOWER_USER and CHECKOUT_FLOWER_PASSWORD",
        ),
        (
            {
                "CHECKOUT_BROKER_URL": NO_REDIS,
                "CHECKOUT_FLOWER_USER": "ops",
                "CHECKOUT_FLOWER_PASSWORD": "secret",
                "FLOWER_BASIC_AUTH": "other:secret",
            },
            "unset FLOWER_BASIC_AUTH",
        ),
        (
            {"CHECKOUT_FLOWER_USER": "ops", "CHECKOUT_FLOWER_PASSWORD": "secret"},
            "memory:// broker",
        ),
        (
            {"CHECKOUT_BROKER_URL": NO_REDIS, "CHECKOUT_FLOWER_USER": "o:ps", "CHECKOUT_FLOWER_PASSWORD": "secret"},
            "CHECKOUT_FLOWER_USER: no ':'",
        ),
    ],
)
def test_flower_does_not_start_open(variables: dict[str, str], message: str) -> None:
    done = run_flower(**variables)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stderr
    assert "Visit me" not in done.stdout + done.stderr


def test_the_password_is_never_shown_and_must_be_ascii() -> None:
    settings = Settings(flower_user="ops", flower_password="s3cret")  # type: ignore[arg-type]
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.flower_password)
    with pytest.raises(ValidationError, match="flower_password"):
        Settings(flower_password="pässword")  # type: ignore[arg-type]


def test_metrics_route_asks_for_credentials() -> None:
    handlers = list(urls.handlers)
    protect_metrics(handlers)
    routes = {h[0]: h[1] for h in handlers if isinstance(h, tuple)}
    assert routes[METRICS_ROUTE] is AuthenticatedMetrics
    assert issubclass(AuthenticatedMetrics, Metrics)
    assert routes[r"/healthcheck"] is Healthcheck
    # Flower's own table is left alone until the launcher runs.
    assert dict(h[:2] for h in urls.handlers if isinstance(h, tuple))[METRICS_ROUTE] is Metrics


def test_a_flower_without_the_metrics_route_is_refused() -> None:
    with pytest.raises(RuntimeError, match="/metrics"):
        protect_metrics([(r"/healthcheck", Healthcheck)])
    with pytest.raises(RuntimeError, match="/metrics"):
        protect_metrics([(METRICS_ROUTE, Healthcheck)])
