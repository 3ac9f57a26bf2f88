"""``python -m app``: the demo, the auditor and help, run as a user runs them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, data_dir: Path, timeout: float = 120, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env["CHECKOUT_DATA_DIR"] = str(data_dir)
    env.update(settings or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_demo_then_audit_then_a_violation(tmp_path: Path) -> None:
    demo = run("demo", "--repeat", "1", data_dir=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    for label, outcome in [
        ("tok_ok", "COMPLETED"),
        ("tok_declined", "card_declined"),
        ("tok_flaky", "COMPLETED"),
        ("tok_down", "payment_unavailable"),
        ("qty > stock", "out_of_stock"),
        ("ship to AQ", "shipping_unavailable"),
    ]:
        assert any(label in line and outcome in line for line in out.splitlines()), (label, out)
    assert "auditor: clean" in out
    assert out.count("InvalidOrder:") == 6

    clean = run("audit", data_dir=tmp_path)
    assert clean.returncode == 0 and clean.stdout.startswith("clean: 6 orders")

    with sqlite3.connect(tmp_path / "checkout.db") as db:
        db.execute("UPDATE inventory_stock SET available = available - 1 WHERE sku = 'MUG-01'")
    broken = run("audit", data_dir=tmp_path)
    assert broken.returncode == 1
    assert "stock MUG-01: initial" in broken.stdout


def test_help_names_the_commands(tmp_path: Path) -> None:
    done = run("--help", data_dir=tmp_path)
    assert done.returncode == 0
    for command in ("demo", "audit", "catalog", "place", "orders", "db", "settings"):
        assert command in done.stdout


def test_place_reports_invalid_input(tmp_path: Path) -> None:
    done = run("place", "NOPE-1:1", data_dir=tmp_path)
    assert done.returncode == 2
    assert "items[0].sku" in done.stderr


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(CHECKOUT_DATA_DIR=str(tmp_path), CHECKOUT_RETRY_MAX="lots")
    done = subprocess.run(
        [sys.executable, "-m", "app", "audit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "CHECKOUT_RETRY_MAX" in done.stderr and "Traceback" not in done.stderr


def test_health_exit_codes(tmp_path: Path) -> None:
    ok = run("health", data_dir=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok    database order" in ok.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env["CHECKOUT_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    bad = subprocess.run(
        [sys.executable, "-m", "app", "health", "--service", "payment"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "FAIL  database payment" in bad.stdout


def test_orders_list_and_show(tmp_path: Path) -> None:
    assert run("place", "MUG-01:2", "--country", "AQ", data_dir=tmp_path).returncode == 0
    listed = run("orders", "list", "--status", "cancelled", "--newer-than", "1h", data_dir=tmp_path)
    assert listed.returncode == 0 and "shipping_unavailable" in listed.stdout
    order_id = listed.stdout.splitlines()[2].split()[0]
    assert run("orders", "list", "--status", "completed", data_dir=tmp_path).stdout.strip().endswith("0 order(s)")
    assert order_id in run("orders", "list", "--saga-version", "1", data_dir=tmp_path).stdout
    assert run("orders", "list", "--saga-version", "2", data_dir=tmp_path).stdout.strip().endswith("0 order(s)")
    shown = run("orders", "show", order_id, data_dir=tmp_path)
    assert shown.returncode == 0 and "saga version 1" in shown.stdout
    # (the failure event is recorded before the cancellation, which needs its reason)
    for text in ("OrderPlaced", "ShipmentFailed", "OrderCancelled"):
        assert text in shown.stdout
    assert any(
        line.split()[1:5] == ["shipping", "ShipmentFailed", "schedule_shipping", "failed"]
        for line in shown.stdout.splitlines()
    )
    mermaid = run("orders", "show", order_id, "--mermaid", data_dir=tmp_path).stdout
    assert mermaid.startswith("sequenceDiagram")
    assert (
        "shipping-->>order: ShipmentFailed" in mermaid and "Note over order: CANCELLED shipping_unavailable" in mermaid
    )
    # only a parked saga can be retried: a cancelled one is refused, naming its status, and stays as it was
    refused = run("orders", "retry", order_id, data_dir=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = f"error: order {order_id} is CANCELLED, not NEEDS_ATTENTION: there is nothing to retry"
    assert refused.stderr.strip() == said
    assert refused.stdout == ""
    assert run("orders", "list", "--status", "cancelled", data_dir=tmp_path).stdout.count(order_id) == 1
    missing = run("orders", "retry", "no-such-order", data_dir=tmp_path)
    assert (missing.returncode, missing.stderr.strip()) == (1, "error: no order with id 'no-such-order'")


def test_beat_as_the_readme_runs_it_leaves_no_schedule_file_behind(tmp_path: Path) -> None:
    """`celery -A workers.order beat`, word for word from the README, ticks (it sends the
    sweep) and writes nothing where it runs: its schedule is kept in memory."""
    (line,) = [
        ln
        for ln in (ROOT / "README.md").read_text().splitlines()
        if ln.startswith("celery -A workers.order ") and " beat" in ln
    ]
    command = line.split("#", 1)[0].split()
    assert command[:3] == ["celery", "-A", "workers.order"] and command[3:] == ["beat"]
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    env.update(PYTHONPATH=str(ROOT), CHECKOUT_DATA_DIR=str(tmp_path / "data"), CHECKOUT_SWEEP_INTERVAL_SECONDS="0.5")
    log = tmp_path / "beat.log"
    with log.open("w") as out:
        beat = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), *command[1:], "--loglevel=INFO"],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: "Sending due task sweep-overdue-sagas" in log.read_text(),
            timeout=60,
            what="beat to send the sweep",
            diagnostics=lambda: log.read_text()[-2000:],
        )
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert sorted(p.name for p in work.iterdir()) == []


#: A RabbitMQ nobody listens at: what a command sees with the broker down.
BROKER_AWAY = {"CHECKOUT_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//", "CHECKOUT_PUBLISH_RETRY_SECONDS": "1"}


def test_a_command_that_needs_the_broker_says_in_one_line_that_it_is_away(tmp_path: Path) -> None:
    done = run("dlq", "list", data_dir=tmp_path, settings=BROKER_AWAY)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: the broker cannot be reached (") and "`python -m app health`" in line


def test_place_that_times_out_says_the_order_goes_on(tmp_path: Path) -> None:
    done = run("place", "MUG-01:1", "--timeout", "1", data_dir=tmp_path, settings=BROKER_AWAY)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    order_id, status = done.stdout.split()
    assert status == "PENDING"
    assert (
        f"still PENDING after 1s: the order is placed and its saga goes on; `python -m app orders show {order_id}`"
        in (done.stderr)
    )


#: Steps that give up after one quick retry: a dead letter in a second.
QUICK = {"CHECKOUT_RETRY_MAX": "1", "CHECKOUT_RETRY_BASE_SECONDS": "0.05", "CHECKOUT_RETRY_CAP_SECONDS": "0.2"}


def test_dlq_redrive_by_filter_previews_first_and_sends_only_with_the_previews_token(tmp_path: Path) -> None:
    assert run("place", "MUG-01:1", "--token", "tok_down", data_dir=tmp_path, settings=QUICK).returncode == 0
    preview = run("dlq", "redrive", "--queue", "payment", "--reason", "UNAVAILABLE", data_dir=tmp_path)
    assert preview.returncode == 2, preview.stdout + preview.stderr
    (row,) = [line.split() for line in preview.stdout.splitlines() if "payment.authorize" in line]
    assert row[1:3] == ["payment", "payment.authorize"] and "gateway" in row
    assert "1 dead letter(s) would be sent again, 1 calling the gateway or the carrier" in preview.stdout
    token = preview.stderr.split("--confirm ")[1].strip()
    assert "DEAD" in run("dlq", "list", data_dir=tmp_path).stdout  # the preview sent nothing

    stale = run("dlq", "redrive", "--queue", "inventory", "--confirm", token, data_dir=tmp_path)
    assert stale.returncode == 1 and stale.stderr.startswith("error: the selection changed"), stale.stderr
    done = run("dlq", "redrive", "--queue", "payment", "--reason", "UNAVAILABLE", "--confirm", token, data_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 dead letter(s) redriven" in done.stdout
    listed = run("dlq", "list", "--all", data_dir=tmp_path).stdout.splitlines()
    (mine,) = [line for line in listed if line.startswith(row[0])]
    assert mine.split()[1:3] == ["payment", "payment.authorize"] and mine.endswith("REDRIVEN")
