"""``python -m app replay``: send logged events again to one consumer, or rebuild the order
projection from the logs."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from app.cli.common import parse_since, runtime
from app.cli.output import Cell, counts, print_table

if TYPE_CHECKING:
    from rich.progress import Progress

    from app.operations.replay import ReplayPlan, Selection
    from app.persistence.outbox import Publisher

cli = typer.Typer()

HELP = """\
Send logged events again to one consumer, or rebuild the order projection from the logs.

Replay picks events from every service's event log — by order, type and/or time (an event
must match each selector given) — and sends each one, with its original event id, to the
consumer task named by --to (a task of app/domain/subscriptions.py). Selected events the consumer
does not subscribe to are skipped and counted. Consumers are idempotent by event id: one
that already handled an event ignores it (its inbox), so replaying is harmless and only
the events it has not handled take effect; a new consumer applies them all. Replay never
goes around a consumer's inbox. Embedded (no CHECKOUT_BROKER_URL set), the workers run in
this process until everything sent has been handled.

--rebuild orders folds each order's events from every log, oldest first, by the order
service's own rules, into a fresh table (order_orders_rebuilt), then prints each order and
field where the live projection differs, live then rebuilt; exit 1 if any does. Compared:
status (NEEDS_ATTENTION counts as PENDING: parking is not an event), reason, customer,
total, currency, steps, timeline.

\b
examples:
  python -m app replay --order ID --to order.record --dry-run
  python -m app replay --type OrderCompleted --since 2h --to inventory.commit
  python -m app replay --rebuild orders
"""

USAGE = "[--order ID] [--type TYPE]... [--since TIME] --to CONSUMER [--dry-run] | --rebuild orders"
WHICH = "Which events (at least one; an event must match each given)"


@cli.command(
    "replay",
    help=HELP,
    short_help="send logged events again to a consumer, or rebuild the order projection from the logs",
    options_metavar=USAGE,
)
def replay(
    ctx: typer.Context,
    order: Annotated[
        str | None, typer.Option("--order", metavar="ID", help="the events of this order", rich_help_panel=WHICH)
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="events of this type, e.g. PaymentCaptured (repeatable)",
            rich_help_panel=WHICH,
        ),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            parser=parse_since,
            metavar="TIME",
            help="events since this ISO 8601 time (UTC unless it says) or age (15m)",
            rich_help_panel=WHICH,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="CONSUMER", help="the consumer task, e.g. order.record or inventory.commit"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be sent (by type, then each); send nothing")
    ] = False,
    show: Annotated[int, typer.Option("--show", metavar="N", help="with --dry-run: list the first N events")] = 20,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", help="embedded: seconds to wait for the events to be handled"),
    ] = 60.0,
    rebuild: Annotated[
        Literal["orders"] | None,
        typer.Option(
            "--rebuild",
            metavar="orders",
            help="instead: rebuild the order projection from the logs and print its diff against the live one",
        ),
    ] = None,
) -> int:
    selected = order is not None or bool(types) or since is not None
    if rebuild:
        if selected or to or dry_run:
            ctx.fail("--rebuild goes alone: it reads every event of every log")
        return _rebuild()
    if not selected:
        ctx.fail("choose the events: --order ID, --type TYPE and/or --since TIME (or --rebuild orders)")
    if not to:
        ctx.fail("name the consumer to send them to: --to CONSUMER (e.g. order.record)")
    from app.operations.replay import Selection

    return _replay(Selection(order, tuple(types or ()), since), to, dry_run=dry_run, show=show, timeout=timeout)


def _replay(selection: Selection, to: str, *, dry_run: bool, show: int, timeout: float) -> int:
    from app.operations.replay import ReplayError, plan_replay

    rt = runtime()
    try:
        try:
            plan = plan_replay(rt.databases, selection, to, rt.subscriptions)
        except ReplayError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if dry_run:
            _listing(plan, selection, show, rt.subscriptions)
            return 0
        if not plan.events:
            print(f"0 events sent to {plan.consumer}, {len(plan.skipped)} skipped ({selection})")
            return 0
        if not rt.settings.embedded:
            return _send(plan, rt.relay.publisher)
    finally:
        rt.close()
    # Embedded: the broker lives in this process, so its workers must run here until done.
    from app.api import System

    system = System(rt.settings).start()
    try:
        code = _send(plan, system.runtime.relay.publisher)
        if code == 0 and not system.workers.wait_idle(timeout=timeout):
            print(f"error: the in-process workers were still busy after {timeout:g}s", file=sys.stderr)
            code = 1
        return code
    finally:
        system.stop()


def _listing(plan: ReplayPlan, selection: Selection, show: int, table: dict[str, tuple[str, ...]]) -> None:
    print(
        f"dry run ({selection}): {len(plan.events)} events would be sent to {plan.consumer}, "
        f"{len(plan.skipped)} skipped; nothing sent"
    )
    rows: list[tuple[Cell, ...]] = [(t, n, plan.consumer) for t, n in sorted(plan.by_type().items())]
    for event_type, n in sorted(plan.by_type(plan.skipped).items()):
        others = ", ".join(table.get(event_type, ())) or "none"
        rows.append((event_type, n, f"skipped (its consumers: {others})"))
    print_table(rows, ("event", "count", "to"))
    if plan.already_handled:
        print(_handled_note(plan))
    every = sorted(plan.events + plan.skipped, key=lambda env: env.occurred_at)
    sending = {env.event_id for env in plan.events}
    if every and show > 0:
        print(f"first {min(show, len(every))} of {len(every)}, oldest first:")
        lines = [
            (
                env.occurred_at.isoformat(timespec="milliseconds"),
                env.service,
                env.event_type,
                env.event_id,
                env.key,
                "send" if env.event_id in sending else "skip",
            )
            for env in every[:show]
        ]
        print_table(lines, ("time", "service", "event", "event id", "order", "action"))


def _handled_note(plan: ReplayPlan) -> str:
    rest = len(plan.events) - plan.already_handled
    return (
        f"{plan.consumer} has handled {plan.already_handled} of them already: it ignores those "
        f"(its inbox keeps every event id it handled), so sending them again is harmless; "
        f"{rest} may take effect"
    )


def _progress(label: str) -> Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _send(plan: ReplayPlan, publisher: Publisher) -> int:
    from app.domain.events import Envelope
    from app.operations.replay import send

    done = 0
    with _progress(f"replay to {plan.consumer}") as bar:
        task = bar.add_task("send", total=len(plan.events))

        def sent_one(_env: Envelope) -> None:
            nonlocal done
            done += 1
            bar.advance(task)

        try:
            sent = send(plan, publisher, on_sent=sent_one)
        except Exception as exc:  # the broker is unreachable, say; say how far it got
            print(f"error: sending stopped after {done} of {len(plan.events)} events: {exc!r}", file=sys.stderr)
            return 1
    skipped = f" ({counts(plan.by_type(plan.skipped))}: not subscribed)" if plan.skipped else ""
    print(f"{sum(sent.values())} events sent to {plan.consumer} ({counts(sent)}), {len(plan.skipped)} skipped{skipped}")
    if plan.already_handled:
        print(_handled_note(plan))
    return 0


def _rebuild() -> int:
    from app.operations.replay import NOT_COMPARED_NOTE, REBUILT_TABLE, rebuild_orders

    rt = runtime()
    try:
        report = rebuild_orders(rt.databases)
    finally:
        rt.close()
    ignored = f"; events of {report.stray} unknown order(s) ignored" if report.stray else ""
    if report.consistent:
        print(f"consistent: {report.orders} orders (rebuilt from {report.events} events into {REBUILT_TABLE}){ignored}")
        return 0
    rows = [
        (d.order_id, d.field, "-" if d.live is None else d.live, "-" if d.rebuilt is None else d.rebuilt)
        for d in report.differences
    ]
    print_table(rows, ("order", "field", "live", "rebuilt"))
    print(
        f"{len(report.differing_orders)} of {max(report.orders, report.live)} orders differ "
        f"(the rebuilt projection is in {REBUILT_TABLE}){ignored}"
    )
    print(NOT_COMPARED_NOTE)
    return 1
