"""``python -m app dlq ...``: dead letters, the messages that could not be handled — list
them, read one, send them again, or drop them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import runtime
from app.cli.output import ago, print_table
from app.domain.errors import OrderFinished, OrderNotFound

if TYPE_CHECKING:
    from app.operations.dlq import DeadLetterOps

cli = typer.Typer(
    name="dlq",
    help="Dead letters: messages that could not be handled (a step out of retries, an unreadable "
    "or invalid message), kept in each service's dead-letter table with why and how often they failed.",
    short_help="dead letters: messages that could not be handled",
)


def _ops() -> DeadLetterOps:
    from app.operations.dlq import DeadLetterOps

    return DeadLetterOps(runtime())


@cli.command("list", short_help="queue, task, order, reason, attempts, first and last failure")
def list_letters(
    every: Annotated[bool, typer.Option("--all", help="also those redriven, resolved or purged")] = False,
    order: Annotated[str | None, typer.Option("--order", metavar="ORDER_ID", help="only this order's")] = None,
) -> int:
    """The dead letters still dead (with --all, every one): id, queue, task, order, reason,
    attempts, first and last failure, status; on RabbitMQ, the depth of each .dlq queue."""
    ops = _ops()
    ops.take_in()  # what RabbitMQ dead-lettered on its own (a delivery limit) shows too
    letters = ops.letters(include_done=every, order_id=order)
    rows = [
        (
            d.id[:8],
            d.queue,
            d.task or "-",
            (d.order_id or "-")[:8],
            d.reason[:60],
            d.attempts,
            ago(d.first_failed_at),
            ago(d.last_failed_at),
            d.status,
        )
        for d in letters
    ]
    print_table(rows, ("id", "queue", "task", "order", "reason", "attempts", "first", "last", "status"))
    depths = ops.broker_depths()
    if depths:
        print("RabbitMQ dead-letter queues: " + ", ".join(f"{q} {n}" for q, n in depths.items()))
    print(f"{len(letters)} dead letter(s)")
    return 0


@cli.command("show", short_help="one dead letter in full, with its traceback summary")
def show(
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="the id (or its first characters, as `list` shows)")],
) -> int:
    """One dead letter in full: where and why it died, how often, when, and the summary of
    its traceback. Exit 1 if there is no such dead letter."""
    try:
        letter = _ops().show(letter_id)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    for label, value in (
        ("id", letter.id),
        ("status", letter.status),
        ("queue", letter.queue),
        ("task", letter.task),
        ("order", letter.order_id),
        ("reason", letter.reason),
        ("error", letter.error),
        ("attempts", letter.attempts),
        ("first failure", letter.first_failed_at.isoformat()),
        ("last failure", letter.last_failed_at.isoformat()),
    ):
        print(f"{label:>13}: {value}")
    if letter.traceback:
        print("    traceback:")
        for line in letter.traceback.splitlines():
            print(f"      {line}")
    return 0


@cli.command("redrive", short_help="send a dead letter again with its retries reset, or all of an order's")
def redrive(
    letter_id: Annotated[str | None, typer.Argument(metavar="ID", help="the dead letter to send again")] = None,
    order: Annotated[
        str | None, typer.Option("--order", metavar="ORDER_ID", help="every dead letter of this order")
    ] = None,
    compensate: Annotated[
        bool, typer.Option("--compensate", help="with --order: compensate the order instead of resuming it")
    ] = False,
    queue: Annotated[str | None, typer.Option("--queue", metavar="QUEUE", help="those of this queue")] = None,
    task: Annotated[str | None, typer.Option("--task", metavar="TASK", help="those of this task")] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", metavar="TEXT", help="those whose reason holds TEXT (any case)")
    ] = None,
    confirm: Annotated[
        str | None, typer.Option("--confirm", metavar="TOKEN", help="send what the preview with this token listed")
    ] = None,
) -> int:
    """Send a dead letter again, its retries reset (exit 1 if there is no such one, or it is
    not dead), or with --order every dead letter of that order: its saga resumes, or with
    --compensate gives up on them and compensates the order (exit 1 if its saga is over).
    With --queue, --task or --reason (and --order), the dead letters they all match: first
    the preview (exit 2, nothing sent: each letter's task and the outside system it calls),
    then with --confirm TOKEN of that preview they are sent (exit 1, nothing sent, if the
    selection changed since). Exit 2 without an ID, --order or a filter."""
    if queue or task or reason or confirm:
        if letter_id or compensate:
            print("error: --queue, --task, --reason and --confirm go without ID or --compensate", file=sys.stderr)
            return 2
        return _redrive_selected(order, queue, task, reason, confirm)
    ops = _ops()
    if order:
        try:
            letters = ops.redrive_order(order, compensate=compensate)
        except (OrderFinished, OrderNotFound) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        verb = "resolved by compensating the order" if compensate else "redriven"
        print(f"{len(letters)} dead letter(s) of order {order} {verb}")
        return 0
    if not letter_id:
        print("error: give a dead letter ID, or --order ORDER_ID", file=sys.stderr)
        return 2
    if compensate:
        print("error: --compensate goes with --order", file=sys.stderr)
        return 2
    try:
        done = ops.redrive(letter_id)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"redriven {done.letter.id} ({done.letter.task} on {done.letter.queue}) with its retries reset")
    return 0


def _redrive_selected(
    order: str | None, queue: str | None, task: str | None, reason: str | None, confirm: str | None
) -> int:
    from app.operations.bulk import BulkOps, LetterFilter, RedrivePreview, StalePreview

    def show(preview: RedrivePreview) -> None:
        rows = [
            (d.id[:8], d.queue, d.task or "-", (d.order_id or "-")[:8], d.reason[:60], r.external or "-", r.blocked)
            for r in preview.letters
            for d in (r.letter,)
        ]
        print_table(rows, ("id", "queue", "task", "order", "reason", "calls", "cannot be sent"))

    bulk = BulkOps(runtime())
    selection = LetterFilter(queue=queue, task=task, order_id=order, reason=reason)
    if confirm is None:
        preview = bulk.preview_redrive(selection)
        show(preview)
        calls = sum(r.external is not None for r in preview.letters)
        print(f"{len(preview.letters)} dead letter(s) would be sent again, {calls} calling the gateway or the carrier")
        print(f"nothing sent; to send them, run again with --confirm {preview.token}", file=sys.stderr)
        return 2
    try:
        done = bulk.redrive(selection, confirm)
    except StalePreview as exc:
        show(exc.preview)
        print(f"error: {exc}; the new preview's token is {exc.preview.token}", file=sys.stderr)
        return 1
    for passed in done.not_sent:
        print(f"not sent {passed.id}: {passed.why}")
    print(f"{len(done.redriven)} dead letter(s) redriven with their retries reset")
    return 0


@cli.command("purge", short_help="drop one dead letter, or all of them (with --yes)")
def purge(
    letter_id: Annotated[str | None, typer.Argument(metavar="ID", help="only this one")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm dropping every dead letter")] = False,
) -> int:
    """Drop one dead letter for good, or every one (and RabbitMQ's .dlq queues) with --yes;
    without either, say how many would go and exit 2."""
    ops = _ops()
    if letter_id is None and not yes:
        count = len(ops.letters())
        print(f"this drops {count} dead letter(s) for good; run again with --yes", file=sys.stderr)
        return 2
    try:
        count = ops.purge(letter_id)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"purged {count} dead letter(s)")
    return 0
