"""``python -m app orders ...``: look at orders — one order's story, the list, parked sagas."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import parse_age, runtime
from app.cli.output import Cell, ago, money, print_table, took
from app.domain.errors import NotParked, OrderNotFound
from app.domain.states import OrderStatus, StepOutcome
from app.operations.story import sequence_diagram

if TYPE_CHECKING:
    from app.persistence.deadletters import DeadLetter
    from app.services.order import OrderView

cli = typer.Typer(
    name="orders",
    help="Look at orders: one order's story (every event, step and dead letter), the list filtered by "
    "status, reason and age, the sagas parked for attention, and resuming one.",
    short_help="look at orders",
)

STATUSES: tuple[OrderStatus, ...] = tuple(OrderStatus)


def _status(text: str) -> OrderStatus:
    for status in STATUSES:  # any case: --status cancelled
        if status == text.upper():
            return status
    raise typer.BadParameter(f"invalid choice: {text!r} (choose from {', '.join(STATUSES)})")


@cli.command("show", short_help="one order's story: every event and step, dead letters")
def show(
    order_id: Annotated[str, typer.Argument(metavar="ORDER_ID", help="the order's id, as `orders list` shows it")],
    mermaid: Annotated[bool, typer.Option("--mermaid", help="print the story as a Mermaid sequence diagram")] = False,
    trace: Annotated[
        bool,
        typer.Option("--trace", help="then print the order's trace spans as a tree (from CHECKOUT_TRACE_FILE)"),
    ] = False,
) -> int:
    """One order's story, oldest first: each event, from which service, the saga step it
    reports, its outcome, the attempts and time the step took; dead letters where a message
    died; then the compensations. Exit 1 if there is no such order."""
    rt = runtime()
    try:
        view = rt.order.view(order_id)
        letters = rt.dead_letters.find(status=None, order_id=order_id)
        traceparents = [env.traceparent for db in rt.databases.values() for env in db.log(order_id)] if trace else []
    except OrderNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    if mermaid:
        print(sequence_diagram(view, letters))
        return 0
    step_of_task = {step.task: step.name for step in rt.saga.steps}
    step_of_task.update({s.compensation.task: s.compensation.name for s in rt.saga.steps if s.compensation})
    print(f"order {view.order_id}  {view.status}  {view.reason or ''}".rstrip())
    print(
        f"total {money(view.total_cents, view.currency)}  placed {view.created_at.isoformat()}  "
        f"saga version {view.saga_version}"
    )
    if view.attention:
        print(f"needs attention: {view.attention}")
    print_table(
        _story(view, letters, step_of_task), ("after", "service", "event", "step", "outcome", "attempts", "took")
    )
    compensations = [e.step for e in view.events if e.compensation and e.outcome == StepOutcome.DONE]
    if compensations:
        print(f"compensations: {', '.join(str(step) for step in compensations)}")
    for letter in letters:
        print(
            f"dead letter {letter.id[:8]} [{letter.status}] {letter.task}: {letter.reason} "
            f"(attempts {letter.attempts}, first {letter.first_failed_at.isoformat()})"
        )
    if trace:
        return print_trace(order_id, rt.settings.trace_file, traceparents)
    return 0


def print_trace(order_id: str, trace_file: Path | None, traceparents: list[str | None]) -> int:
    """The order's span tree, or why there is none (exit 1)."""
    from app.operations.traces import order_spans, read_spans, render

    if trace_file is None:
        print(
            "no trace: CHECKOUT_TRACE_FILE is not set, so no spans were kept here (with OTEL_TRACES_EXPORTER "
            "they went to that exporter)",
            file=sys.stderr,
        )
        return 1
    try:
        spans = order_spans(read_spans(trace_file), order_id, traceparents)
    except OSError as exc:
        print(f"no trace: cannot read {trace_file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not spans:
        print(f"no trace: {trace_file} holds no span of order {order_id} (was it traced?)", file=sys.stderr)
        return 1
    for line in render(spans):
        print(line)
    return 0


def _story(view: OrderView, letters: Sequence[DeadLetter], step_of_task: dict[str, str]) -> list[tuple[Cell, ...]]:
    """The rows of ``orders show``: the events and, where a message died, its dead letter."""
    timed: list[tuple[datetime, tuple[Cell, ...]]] = []
    for entry in view.events:
        outcome = "compensated" if entry.compensation and entry.outcome == StepOutcome.DONE else entry.outcome
        cells = (entry.service, entry.type, entry.step, outcome, entry.attempts, took(entry.duration_seconds))
        timed.append((entry.time, cells))
    for letter in letters:  # where a message died, among the events
        spent = took((letter.last_failed_at - letter.first_failed_at).total_seconds())
        step = step_of_task.get(letter.task or "", letter.task)
        timed.append(
            (
                letter.last_failed_at,
                (letter.service, "dead letter", step, letter.status.lower(), letter.attempts, spent),
            )
        )
    timed.sort(key=lambda item: item[0])  # stable: events keep their recorded order
    return [(f"+{(moment - view.created_at).total_seconds():.3f}s", *cells) for moment, cells in timed]


@cli.command("list", short_help="orders, newest first, filtered by status, reason and age")
def list_orders(
    status: Annotated[
        OrderStatus | None,
        typer.Option(
            "--status",
            parser=_status,
            metavar="{" + ",".join(STATUSES) + "}",
            help="only orders in this status (any case)",
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            metavar="REASON",
            help="only orders that failed with this reason, e.g. card_declined, out_of_stock, payment_unavailable",
        ),
    ] = None,
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            "--older-than", parser=parse_age, metavar="AGE", help="placed at least this long ago (90s, 15m, 2h, 3d)"
        ),
    ] = None,
    newer_than: Annotated[
        timedelta | None,
        typer.Option(
            "--newer-than", parser=parse_age, metavar="AGE", help="placed within this long (90s, 15m, 2h, 3d)"
        ),
    ] = None,
    saga_version: Annotated[
        int | None,
        typer.Option(
            "--saga-version",
            min=1,
            metavar="N",
            help="only orders started under this version of the saga definition (with --status PENDING: "
            "those still following it)",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="at most this many")] = 50,
) -> int:
    """Orders, newest first: id, status, reason, total and when placed; filters combine."""
    rt = runtime()
    try:
        rows = rt.order.find(
            status=status,
            reason=reason,
            older_than=older_than,
            newer_than=newer_than,
            saga_version=saga_version,
            limit=limit,
        )
    finally:
        rt.close()
    from app.persistence.db import as_utc

    print_table(
        [
            (
                r["order_id"],
                r["status"],
                r["reason"] or "",
                money(r["total_cents"], r["currency"]),
                ago(as_utc(r["created_at"])),
            )
            for r in rows
        ],
        ("order", "status", "reason", "total", "placed"),
    )
    print(f"{len(rows)} order(s)" + (f" (the newest {limit})" if len(rows) == limit else ""))
    return 0


@cli.command("attention", short_help="sagas parked because a compensation could not finish")
def attention() -> int:
    """Orders whose saga is parked (NEEDS_ATTENTION): a compensation could not finish. Once
    the cause is fixed, `orders retry ID` resumes one."""
    rt = runtime()
    try:
        views = rt.order.needing_attention()
    finally:
        rt.close()
    rows = [(v.order_id, v.reason or "", v.attention or "", ago(v.updated_at)) for v in views]
    print_table(rows, ("order", "failed with", "waiting on", "since"))
    print(f"{len(views)} order(s) need attention; `python -m app orders retry ID` once the cause is fixed")
    return 0


@cli.command("retry", short_help="resume a parked saga: redrive its dead letters")
def retry(order_id: Annotated[str, typer.Argument(metavar="ORDER_ID", help="the parked order")]) -> int:
    """Resume a parked saga: its dead letters are sent again, retries reset, and the
    compensation chain goes on from the step that could not finish. Exit 1, changing
    nothing, if the order is not parked (NEEDS_ATTENTION) or does not exist."""
    from app.operations.dlq import DeadLetterOps

    try:
        letters = DeadLetterOps(runtime()).retry_order(order_id)
    except (NotParked, OrderNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"order {order_id}: resumed; {len(letters)} dead letter(s) redriven")
    return 0
