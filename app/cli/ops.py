"""``python -m app sweep | health | metrics | relay``: running the system — the sweeper once,
the health check a container runs, and the two long-running processes besides the workers."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli.common import runtime
from app.messaging.telemetry import use_log_format

cli = typer.Typer()


@cli.command("sweep", short_help="re-drive sagas past their deadline, once (beat does it periodically)")
def sweep() -> int:
    """One round of the saga sweeper: each saga past its deadline whose messages were lost is
    re-driven from what was recorded (its missing deliveries sent again) or, out of time,
    compensated. Prints what it did; beat runs the same sweep periodically."""
    rt = runtime()
    try:
        report = rt.sweep(rt.celery)
    finally:
        rt.close()
    print(f"sweep: {report}")
    for order_id in report.resumed:
        print(f"  resumed     {order_id}")
    for order_id in report.compensated:
        print(f"  compensated {order_id}")
    return 0


@cli.command("health", short_help="broker, databases, a worker per queue; exit 1 if any fails")
def health(
    services: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            metavar="SERVICE",
            help="check only what this service (or extension) needs (repeatable): order, inventory, payment, "
            "shipping, or a name in CHECKOUT_EXTENSIONS",
        ),
    ] = None,
    this_host: Annotated[
        bool,
        typer.Option(
            "--this-host",
            help="count only the workers named <service>@<this host> (-n <service>@%h): a container's own",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="seconds to wait for each answer")
    ] = 2.0,
) -> int:
    """Check the broker, each service's database and a worker on each service's queue (by
    default every service and extension): one line each, ok or FAIL with why. Exit 1 if
    any fails, 2 for a service that is not configured; it fits a container healthcheck."""
    import socket

    from app.bootstrap import Runtime
    from app.operations.health import check

    rt = Runtime()
    wanted = tuple(services) if services else rt.settings.queues
    unknown = [s for s in wanted if s not in rt.settings.queues]
    if unknown:
        rt.close()
        print(
            f"error: no service or extension {', '.join(unknown)}; known: {', '.join(rt.settings.queues)}",
            file=sys.stderr,
        )
        return 2
    try:
        results = check(rt, wanted, timeout=timeout, host=socket.gethostname() if this_host else None)
    finally:
        rt.close()
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<20} {result.detail}")
    return 0 if all(r.ok for r in results) else 1


@cli.command("metrics", short_help="serve saga metrics for Prometheus (orders, steps, dead letters, queue depths)")
def metrics(
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on")] = 9808,
    address: Annotated[
        str, typer.Option("--address", metavar="ADDRESS", help="address to bind (0.0.0.0 for every interface)")
    ] = "127.0.0.1",
    once: Annotated[bool, typer.Option("--once", help="print one scrape's text to stdout and exit")] = False,
) -> int:
    """Serve saga metrics for Prometheus at http://ADDRESS:PORT/metrics until stopped: orders
    by status, saga durations, steps, dead letters, admission and queue depths."""
    from app.operations import metrics as exporter

    rt = runtime()
    try:
        if once:
            print(exporter.exposition(rt), end="")
        else:
            exporter.serve(rt, port=port, address=address)
    finally:
        rt.close()
    return 0


@cli.command(
    "relay",
    short_help="send what every service's outbox still holds, every CHECKOUT_OUTBOX_SWEEP_SECONDS, until stopped",
)
def relay(
    once: Annotated[bool, typer.Option("--once", help="one round, then exit (1 if something was left)")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="exit 0 if the running relay's heartbeat (CHECKOUT_RELAY_HEARTBEAT_FILE) is fresh, else 1"
        ),
    ] = False,
) -> int:
    """The outbox relay: every CHECKOUT_OUTBOX_SWEEP_SECONDS, send the events any service's
    outbox still holds (older than CHECKOUT_OUTBOX_GRACE_SECONDS), logging what it sent; its
    log lines follow CHECKOUT_LOG_FORMAT, like the workers'. Stops on SIGTERM or SIGINT."""
    from app.bootstrap import Runtime
    from app.operations import relay as outbox_relay
    from config.settings import load_settings

    settings = load_settings()
    if check:
        ok, detail = outbox_relay.check(settings)
        print(f"{'ok  ' if ok else 'FAIL'}  relay  {detail}")
        return 0 if ok else 1
    use_log_format(settings.log_format)  # a service process: its lines look like the workers'
    return outbox_relay.main(settings, Runtime, once=once)
