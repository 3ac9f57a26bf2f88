"""``python -m app``: the operator's and the curious user's command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app.domain.errors import Busy, InvalidOrder, OrderNotFound
from app.messaging.telemetry import use_log_format
from config.settings import BUILTIN_EXTENSIONS, SERVICES

DESCRIPTION = """\
Checkout Saga: an event-driven checkout on Celery.

Configuration comes from CHECKOUT_* environment variables (`python -m app settings`
lists them). With none set, everything runs embedded in this process: an in-memory
broker, one worker thread pool per service, and a SQLite file under ./var.
"""


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _money(cents: int, currency: str) -> str:
    return f"{cents // 100}.{cents % 100:02d} {currency}"


def _runtime() -> Any:
    """A runtime over the configured databases, with every table present (none is changed)."""
    from app.bootstrap import Runtime

    rt = Runtime()
    rt.prepare()
    return rt


def cmd_demo(args: argparse.Namespace) -> int:
    from app.cli import demo

    return demo.run(repeat=args.repeat, timeout=args.timeout)


def cmd_audit(args: argparse.Namespace) -> int:
    from app.operations.audit import audit

    rt = _runtime()
    try:
        report = audit(rt, settle=args.settle)
    finally:
        rt.close()
    print(report.summary())
    for violation in report.violations:
        print(f"  - {violation}")
    return 0 if report.clean else 1


def cmd_catalog(_args: argparse.Namespace) -> int:
    import app

    items = app.list_catalog()
    print(
        _table(
            [(i.sku, i.name, _money(i.price_cents, i.currency), i.available) for i in items],
            ("sku", "name", "price", "available"),
        )
    )
    return 0


def cmd_order_show(args: argparse.Namespace) -> int:
    rt = _runtime()
    try:
        view = rt.order.view(args.order_id)
        letters = rt.dead_letters.find(status=None, order_id=args.order_id)
    except OrderNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    step_of_task = {step.task: step.name for step in rt.saga.steps}
    step_of_task.update({s.compensation.task: s.compensation.name for s in rt.saga.steps if s.compensation})
    if args.mermaid:
        print(_mermaid(view, letters))
        return 0
    print(f"order {view.order_id}  {view.status}  {view.reason or ''}".rstrip())
    print(f"total {_money(view.total_cents, view.currency)}  placed {view.created_at.isoformat()}")
    if view.attention:
        print(f"needs attention: {view.attention}")
    timed: list[tuple[Any, tuple[Any, ...]]] = []
    for entry in view.events:
        outcome = "compensated" if entry.compensation and entry.outcome == "done" else entry.outcome
        took = _took(entry.duration_seconds)
        cells = (entry.service, entry.type, entry.step, outcome, entry.attempts, took)
        timed.append((entry.time, cells))
    for letter in letters:  # where a message died, among the events
        took = _took((letter.last_failed_at - letter.first_failed_at).total_seconds())
        step = step_of_task.get(letter.task or "", letter.task)
        cells = (letter.service, "dead letter", step, letter.status.lower(), letter.attempts, took)
        timed.append((letter.last_failed_at, cells))
    timed.sort(key=lambda item: item[0])  # stable: events keep their recorded order
    rows = [(f"+{(moment - view.created_at).total_seconds():.3f}s", *cells) for moment, cells in timed]
    print(_table(rows, ("after", "service", "event", "step", "outcome", "attempts", "took")))
    compensations = [e.step for e in view.events if e.compensation and e.outcome == "done"]
    if compensations:
        print(f"compensations: {', '.join(str(step) for step in compensations)}")
    for letter in letters:
        print(
            f"dead letter {letter.id[:8]} [{letter.status}] {letter.task}: {letter.reason} "
            f"(attempts {letter.attempts}, first {letter.first_failed_at.isoformat()})"
        )
    return 0


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _mermaid(view: Any, letters: Sequence[Any] = ()) -> str:
    """The order's story as a Mermaid sequence diagram: each event from its service, with
    the attempts and time its step took where known; compensations and dead letters marked."""
    lines = ["sequenceDiagram", "    participant order", "    participant inventory", "    participant payment"]
    lines.append("    participant shipping")
    timed: list[tuple[Any, str]] = []
    for entry in view.events:
        offset = (entry.time - view.created_at).total_seconds()
        facts = [f"+{offset:.3f}s"]
        if entry.attempts is not None:
            facts.append(f"{entry.attempts} attempt{'s' if entry.attempts != 1 else ''}")
        if entry.duration_seconds is not None:
            facts.append(f"took {_took(entry.duration_seconds)}")
        kind = ", compensation" if entry.compensation else ""
        label = f"{entry.type}{kind} ({', '.join(facts)})"
        if entry.service == "order":
            if entry.type in {"OrderCompleted", "OrderCancelled"}:
                timed.append((entry.time, f"    order->>inventory: {label}"))
            else:
                timed.append((entry.time, f"    Note over order: {label}"))
        else:
            timed.append((entry.time, f"    {entry.service}-->>order: {label}"))
    for letter in letters:
        offset = (letter.last_failed_at - view.created_at).total_seconds()
        note = (
            f"    Note over {letter.service}: dead letter {letter.task or letter.queue} "
            f"({letter.status.lower()}, {letter.attempts} attempts, +{offset:.3f}s)"
        )
        timed.append((letter.last_failed_at, note))
    timed.sort(key=lambda item: item[0])  # stable: events keep their recorded order
    lines.extend(line for _, line in timed)
    if view.status in {"COMPLETED", "CANCELLED"}:
        lines.append(f"    Note over order: {view.status} {view.reason or ''}".rstrip())
    elif view.attention:
        lines.append(f"    Note over order: NEEDS_ATTENTION {view.attention}")
    return "\n".join(lines)


def _duration(text: str) -> Any:
    """'90s', '15m', '2h', '3d' -> timedelta."""
    from datetime import timedelta

    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a number and a unit, like 90s, 15m, 2h or 3d")
    return timedelta(**{units[text[-1]]: float(text[:-1])})


def cmd_orders_list(args: argparse.Namespace) -> int:
    rt = _runtime()
    try:
        rows = rt.order.find(
            status=args.status,
            reason=args.reason,
            older_than=args.older_than,
            newer_than=args.newer_than,
            limit=args.limit,
        )
    finally:
        rt.close()
    print(
        _table(
            [
                (
                    r["order_id"],
                    r["status"],
                    r["reason"] or "",
                    _money(r["total_cents"], r["currency"]),
                    _ago(_utc(r["created_at"])),
                )
                for r in rows
            ],
            ("order", "status", "reason", "total", "placed"),
        )
    )
    print(f"{len(rows)} order(s)" + (f" (the newest {args.limit})" if len(rows) == args.limit else ""))
    return 0


def _utc(moment: Any) -> Any:
    from app.persistence.db import as_utc

    return as_utc(moment)


def cmd_orders_attention(_args: argparse.Namespace) -> int:
    rt = _runtime()
    try:
        views = rt.order.needing_attention()
    finally:
        rt.close()
    rows = [(v.order_id, v.reason or "", v.attention or "", _ago(v.updated_at)) for v in views]
    print(_table(rows, ("order", "failed with", "waiting on", "since")))
    print(f"{len(views)} order(s) need attention; `python -m app orders retry ID` once the cause is fixed")
    return 0


def cmd_orders_retry(args: argparse.Namespace) -> int:
    letters = _dlq().retry_order(args.order_id)
    print(f"order {args.order_id}: resumed; {len(letters)} dead letter(s) redriven")
    return 0


def cmd_place(args: argparse.Namespace) -> int:
    import app

    items = []
    for spec in args.items:
        sku, _, qty = spec.partition(":")
        items.append({"sku": sku, "qty": int(qty) if qty.isdigit() else qty or 1})
    try:
        order_id = app.place_order(
            args.customer,
            items,
            payment_token=args.token,
            ship_to={"country": args.country} if args.country else None,
        )
    except InvalidOrder as exc:
        print(f"invalid order: {exc}", file=sys.stderr)
        return 2
    except Busy as exc:
        print(f"not placed: the system is {exc} (nothing was written)", file=sys.stderr)
        return 3
    if args.no_wait:
        print(order_id)
        return 0
    view = app.wait_for_order(order_id, timeout=args.timeout)
    print(f"{order_id} {view.status} {view.reason or ''}".rstrip())
    return 0


def _dlq() -> Any:
    from app.operations.dlq import DeadLetterOps

    return DeadLetterOps(_runtime())


def _ago(moment: Any) -> str:
    from datetime import UTC, datetime

    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def cmd_dlq_list(args: argparse.Namespace) -> int:
    ops = _dlq()
    letters = ops.letters(include_done=args.all, order_id=args.order)
    rows = [
        (
            d.id[:8],
            d.queue,
            d.task or "-",
            (d.order_id or "-")[:8],
            d.reason[:60],
            d.attempts,
            _ago(d.first_failed_at),
            _ago(d.last_failed_at),
            d.status,
        )
        for d in letters
    ]
    print(_table(rows, ("id", "queue", "task", "order", "reason", "attempts", "first", "last", "status")))
    depths = ops.broker_depths()
    if depths:
        print("RabbitMQ dead-letter queues: " + ", ".join(f"{q} {n}" for q, n in depths.items()))
    print(f"{len(letters)} dead letter(s)")
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    try:
        letter = _dlq().show(args.id)
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


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    ops = _dlq()
    if args.order:
        letters = ops.redrive_order(args.order, compensate=args.compensate)
        verb = "resolved by compensating the order" if args.compensate else "redriven"
        print(f"{len(letters)} dead letter(s) of order {args.order} {verb}")
        return 0
    if not args.id:
        print("error: give a dead letter ID, or --order ORDER_ID", file=sys.stderr)
        return 2
    if args.compensate:
        print("error: --compensate goes with --order", file=sys.stderr)
        return 2
    try:
        done = ops.redrive(args.id)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"redriven {done.letter.id} ({done.letter.task} on {done.letter.queue}) with its retries reset")
    return 0


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    ops = _dlq()
    if args.id is None and not args.yes:
        count = len(ops.letters())
        print(f"this drops {count} dead letter(s) for good; run again with --yes", file=sys.stderr)
        return 2
    try:
        count = ops.purge(args.id)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"purged {count} dead letter(s)")
    return 0


def cmd_sweep(_args: argparse.Namespace) -> int:
    from app.operations.sweeper import redrive_overdue

    rt = _runtime()
    try:
        report = redrive_overdue(rt, rt.celery)
    finally:
        rt.close()
    print(f"sweep: {report}")
    for order_id in report.resumed:
        print(f"  resumed     {order_id}")
    for order_id in report.compensated:
        print(f"  compensated {order_id}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import socket

    from app.operations.health import check
    from app.bootstrap import Runtime

    rt = Runtime()
    services = tuple(args.service) if args.service else rt.settings.queues
    unknown = [s for s in services if s not in rt.settings.queues]
    if unknown:
        rt.close()
        print(
            f"error: no service or extension {', '.join(unknown)}; known: {', '.join(rt.settings.queues)}",
            file=sys.stderr,
        )
        return 2
    try:
        results = check(rt, services, timeout=args.timeout, host=socket.gethostname() if args.this_host else None)
    finally:
        rt.close()
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<20} {result.detail}")
    return 0 if all(r.ok for r in results) else 1


def cmd_relay(args: argparse.Namespace) -> int:
    from app.operations import relay
    from config.settings import load_settings

    settings = load_settings()
    if args.check:
        ok, detail = relay.check(settings)
        print(f"{'ok  ' if ok else 'FAIL'}  relay  {detail}")
        return 0 if ok else 1
    use_log_format(settings.log_format)  # a service process: its lines look like the workers'
    return relay.main(settings, once=args.once)


def cmd_metrics(args: argparse.Namespace) -> int:
    from app.operations import metrics

    rt = _runtime()
    try:
        if args.once:
            print(metrics.exposition(rt), end="")
        else:
            metrics.serve(rt, port=args.port, address=args.address)
    finally:
        rt.close()
    return 0


def cmd_db_init(_args: argparse.Namespace) -> int:
    from app.bootstrap import Runtime

    rt = Runtime()
    try:
        rt.prepare()
    finally:
        rt.close()
    print("tables created (where missing); catalog and stock seeded")
    return 0


#: Who has a line of migrations: the services, and the extensions that ship with the system.
SERVICE_NAMES = SERVICES + tuple(BUILTIN_EXTENSIONS)


def _service_databases(only: Sequence[str] | None) -> list[tuple[str, str]]:
    """(service, database URL) of each service asked for (all by default), and of each
    built-in extension that CHECKOUT_EXTENSIONS adds."""
    from config.settings import Settings

    settings = Settings()
    owners = SERVICES + tuple(name for name in settings.extension_targets if name in BUILTIN_EXTENSIONS)
    off = [name for name in only or () if name not in owners]
    if off:
        raise SystemExit(
            f"error: {', '.join(off)} is not in CHECKOUT_EXTENSIONS; name it there (CHECKOUT_EXTENSIONS={off[0]}) "
            "in every process's environment to add it"
        )
    return [(service, settings.database_url_for(service)) for service in owners if not only or service in only]


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.bootstrap import service_metadata
    from app.persistence import migrations
    from app.persistence.db import make_engine

    targets = _service_databases(args.service)
    if args.sql:
        for service, url in targets:
            print(f"-- {service} service ({_shown(url)}), version table {migrations.version_table(service)}")
            migrations.upgrade_sql(service, service_metadata(service), url, sys.stdout)
        return 0
    engines: dict[str, Any] = {}
    try:
        for service, url in targets:
            engine = engines.setdefault(url, make_engine(url))
            done = migrations.upgrade(engine, service, service_metadata(service))
            print(f"{done.summary()}  ({_shown(url)})")
    except migrations.SchemaNotCurrent as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for engine in engines.values():
            engine.dispose()
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from app.bootstrap import service_metadata
    from app.persistence import migrations
    from app.persistence.db import make_engine

    rows, behind = [], False
    for service, url in _service_databases(args.service):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                found = migrations.state(conn, service, service_metadata(service))
                at = migrations.current(conn, service) if found == migrations.MANAGED else None
        finally:
            engine.dispose()
        head = migrations.head(service)
        behind = behind or at != head
        rows.append((service, at or f"({found})", head, "yes" if at == head else "no", _shown(url)))
    print(_table(rows, ("service", "revision", "head", "current", "database")))
    return 1 if behind else 0


def cmd_db_history(args: argparse.Namespace) -> int:
    from app.persistence import migrations

    rows = []
    for service in SERVICE_NAMES:
        if args.service and service not in args.service:
            continue
        for script in migrations.history(service):
            rows.append((service, script.revision, script.down_revision or "", script.doc.splitlines()[0]))
    print(_table(rows, ("service", "revision", "after", "what")))
    return 0


REPLAY_DESCRIPTION = """\
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

examples:
  python -m app replay --order ID --to order.record --dry-run
  python -m app replay --type OrderCompleted --since 2h --to inventory.commit
  python -m app replay --rebuild orders
"""


def _since(text: str) -> Any:
    """An ISO 8601 time (UTC unless it has an offset) or an age like 15m -> aware datetime."""
    from datetime import UTC, datetime

    try:
        return datetime.now(UTC) - _duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give an ISO 8601 time (2026-05-01T12:00:00Z) or an age (90s, 15m, 2h, 3d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _progress(label: str) -> Any:
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


def _counts(counter: Any) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items()))


def cmd_replay(args: argparse.Namespace) -> int:
    parser = args.replay_parser
    selected = args.order is not None or bool(args.type) or args.since is not None
    if args.rebuild:
        if selected or args.to or args.dry_run:
            parser.error("--rebuild goes alone: it reads every event of every log")
        return _rebuild()
    if not selected:
        parser.error("choose the events: --order ID, --type TYPE and/or --since TIME (or --rebuild orders)")
    if not args.to:
        parser.error("name the consumer to send them to: --to CONSUMER (e.g. order.record)")
    from app.operations.replay import ReplayError, Selection, plan_replay

    selection = Selection(args.order, tuple(args.type or ()), args.since)
    rt = _runtime()
    try:
        try:
            plan = plan_replay(rt.databases, selection, args.to, rt.subscriptions)
        except ReplayError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.dry_run:
            _replay_listing(plan, selection, args.show, rt.subscriptions)
            return 0
        if not plan.events:
            print(f"0 events sent to {plan.consumer}, {len(plan.skipped)} skipped ({selection})")
            return 0
        if not rt.settings.embedded:
            return _send_replay(plan, rt.relay.publisher)
    finally:
        rt.close()
    # Embedded: the broker lives in this process, so its workers must run here until done.
    from app.api import System

    system = System(rt.settings).start()
    try:
        code = _send_replay(plan, system.runtime.relay.publisher)
        if code == 0 and not system.workers.wait_idle(timeout=args.timeout):
            print(f"error: the in-process workers were still busy after {args.timeout:g}s", file=sys.stderr)
            code = 1
        return code
    finally:
        system.stop()


def _replay_listing(plan: Any, selection: Any, show: int, table: dict[str, tuple[str, ...]]) -> None:
    print(
        f"dry run ({selection}): {len(plan.events)} events would be sent to {plan.consumer}, "
        f"{len(plan.skipped)} skipped; nothing sent"
    )
    rows: list[tuple[Any, ...]] = [(t, n, plan.consumer) for t, n in sorted(plan.by_type().items())]
    for event_type, n in sorted(plan.by_type(plan.skipped).items()):
        others = ", ".join(table.get(event_type, ())) or "none"
        rows.append((event_type, n, f"skipped (its consumers: {others})"))
    print(_table(rows, ("event", "count", "to")))
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
        print(_table(lines, ("time", "service", "event", "event id", "order", "action")))


def _handled_note(plan: Any) -> str:
    rest = len(plan.events) - plan.already_handled
    return (
        f"{plan.consumer} has handled {plan.already_handled} of them already: it ignores those "
        f"(its inbox keeps every event id it handled), so sending them again is harmless; "
        f"{rest} may take effect"
    )


def _send_replay(plan: Any, publisher: Any) -> int:
    from app.operations.replay import send

    done = 0

    def sent_one(_env: Any) -> None:
        nonlocal done
        done += 1
        bar.advance(task)

    with _progress(f"replay to {plan.consumer}") as bar:
        task = bar.add_task("send", total=len(plan.events))
        try:
            sent = send(plan, publisher, on_sent=sent_one)
        except Exception as exc:  # the broker is unreachable, say; say how far it got
            print(f"error: sending stopped after {done} of {len(plan.events)} events: {exc!r}", file=sys.stderr)
            return 1
    skipped = f" ({_counts(plan.by_type(plan.skipped))}: not subscribed)" if plan.skipped else ""
    print(
        f"{sum(sent.values())} events sent to {plan.consumer} ({_counts(sent)}), {len(plan.skipped)} skipped{skipped}"
    )
    if plan.already_handled:
        print(_handled_note(plan))
    return 0


def _rebuild() -> int:
    from app.operations.replay import NOT_COMPARED_NOTE, REBUILT_TABLE, rebuild_orders

    rt = _runtime()
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
    print(_table(rows, ("order", "field", "live", "rebuilt")))
    print(
        f"{len(report.differing_orders)} of {max(report.orders, report.live)} orders differ "
        f"(the rebuilt projection is in {REBUILT_TABLE}){ignored}"
    )
    print(NOT_COMPARED_NOTE)
    return 1


def cmd_settings(_args: argparse.Namespace) -> int:
    from config.settings import Settings, variables

    current = Settings()
    rows = []
    for env, default, description in variables():
        rows.append((env, current.shown(env.removeprefix("CHECKOUT_").lower()), description))
    print(_table(rows, ("variable", "value", "meaning")))
    return 0


def _mode(args: argparse.Namespace) -> str:
    if args.mode:
        return str(args.mode)
    from config.settings import load_settings

    return load_settings().saga_mode


def cmd_analytics(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime, timedelta

    from app.analytics import NAME, sales_by_day

    rt = _runtime()
    try:
        if NAME not in rt.extensions:
            print(
                "error: sales analytics is not on: add analytics to CHECKOUT_EXTENSIONS in every process's "
                "environment, run its worker (celery -A workers.analytics worker -Q analytics), and feed it the "
                "history with: python -m app replay --type OrderCompleted --type OrderCancelled --to analytics.handle",
                file=sys.stderr,
            )
            return 2
        since = datetime.now(UTC).date() - timedelta(days=args.days - 1) if args.days else None
        days = sales_by_day(rt.databases[NAME], since)
    finally:
        rt.close()
    if args.json:
        print(json.dumps([d.as_json() for d in days], indent=2))
        return 0
    if not days:
        print("no order has ended yet" + (f" in the last {args.days} day(s)" if args.days else ""))
        return 0
    table = []
    for d in days:
        revenue = ", ".join(_money(cents, currency) for currency, cents in sorted(d.revenue_cents.items()))
        reasons = ", ".join(f"{reason} {n}" for reason, n in d.reasons.most_common())
        table.append((d.day, d.completed, revenue or "-", d.cancelled, f"{d.cancelled / d.ended:.0%}", reasons))
    print(_table(table, ("day (UTC)", "completed", "revenue", "cancelled", "cancel rate", "why cancelled")))
    return 0


def _extensions() -> list[Any]:
    """The extensions CHECKOUT_EXTENSIONS adds (their definitions, loaded)."""
    from app.extensions import load_all
    from config.settings import load_settings

    return list(load_all(load_settings().extension_targets).values())


def cmd_events_graph(args: argparse.Namespace) -> int:
    from app.operations.eventgraph import mermaid

    print(mermaid(_mode(args), _extensions()))
    return 0


def cmd_events_check(args: argparse.Namespace) -> int:
    from app.operations.eventgraph import problems
    from app.domain.subscriptions import MODES

    modes = MODES if args.mode == "all" else (_mode(args),)
    extensions = _extensions()
    found = [problem for mode in modes for problem in problems(mode, extensions=extensions)]
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if not found:
        print(f"event graph: every event has a consumer and every failure reaches a compensation ({', '.join(modes)})")
    return 1 if found else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text for humans (default) or JSON with correlation and causation ids",
    )
    parser.add_argument("--log-level", default="WARNING", help="WARNING (default), INFO, DEBUG ...")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="place one batch of orders covering every test input, then audit")
    demo.add_argument("--repeat", type=int, default=3, help="orders per test-vocabulary row (default 3)")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the batch (default 60)")
    demo.set_defaults(func=cmd_demo)

    aud = sub.add_parser("audit", help="check the invariants; exit 1 naming every violation")
    aud.add_argument(
        "--settle", type=float, default=0.0, help="re-check for up to this many seconds while sagas finish"
    )
    aud.set_defaults(func=cmd_audit)

    cat = sub.add_parser("catalog", help="list SKUs, prices and available stock")
    cat.set_defaults(func=cmd_catalog)

    place = sub.add_parser("place", help="place one order and wait for its outcome")
    place.add_argument("items", nargs="+", metavar="SKU[:QTY]", help="e.g. MUG-01:2 TEE-01")
    place.add_argument("--customer", default="cli-customer")
    place.add_argument("--token", default="tok_ok", help="tok_ok, tok_declined, tok_flaky or tok_down")
    place.add_argument("--country", help="ISO 3166 alpha-2 shipping country (AQ is not served)")
    place.add_argument("--no-wait", action="store_true", help="print the order id and return at once")
    place.add_argument("--timeout", type=float, default=30.0)
    place.set_defaults(func=cmd_place)

    orders = sub.add_parser("orders", help="look at orders")
    orders_sub = orders.add_subparsers(dest="orders_command", required=True, metavar="ACTION")
    show = orders_sub.add_parser("show", help="one order's story: every event and step, dead letters")
    show.add_argument("order_id")
    show.add_argument("--mermaid", action="store_true", help="print the story as a Mermaid sequence diagram")
    show.set_defaults(func=cmd_order_show)
    olist = orders_sub.add_parser("list", help="orders, newest first, filtered by status, reason and age")
    olist.add_argument("--status", choices=("PENDING", "COMPLETED", "CANCELLED", "NEEDS_ATTENTION"), type=str.upper)
    olist.add_argument("--reason", help="e.g. card_declined, out_of_stock, payment_unavailable")
    olist.add_argument(
        "--older-than", type=_duration, metavar="AGE", help="placed at least this long ago (90s, 15m, 2h, 3d)"
    )
    olist.add_argument("--newer-than", type=_duration, metavar="AGE", help="placed within this long")
    olist.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    olist.set_defaults(func=cmd_orders_list)
    attention = orders_sub.add_parser("attention", help="sagas parked because a compensation could not finish")
    attention.set_defaults(func=cmd_orders_attention)
    retry = orders_sub.add_parser("retry", help="resume a parked saga: redrive its dead letters")
    retry.add_argument("order_id")
    retry.set_defaults(func=cmd_orders_retry)

    dlq = sub.add_parser("dlq", help="dead letters: messages that could not be handled")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="queue, task, order, reason, attempts, first and last failure")
    dlq_list.add_argument("--all", action="store_true", help="also those redriven, resolved or purged")
    dlq_list.add_argument("--order", help="only this order's")
    dlq_list.set_defaults(func=cmd_dlq_list)
    dlq_show = dlq_sub.add_parser("show", help="one dead letter in full, with its traceback summary")
    dlq_show.add_argument("id", help="the id (or its first characters, as `list` shows)")
    dlq_show.set_defaults(func=cmd_dlq_show)
    dlq_redrive = dlq_sub.add_parser(
        "redrive", help="send a dead letter again with its retries reset, or all of an order's"
    )
    dlq_redrive.add_argument("id", nargs="?", help="the dead letter to send again")
    dlq_redrive.add_argument("--order", help="every dead letter of this order")
    dlq_redrive.add_argument(
        "--compensate", action="store_true", help="with --order: compensate the order instead of resuming it"
    )
    dlq_redrive.set_defaults(func=cmd_dlq_redrive)
    dlq_purge = dlq_sub.add_parser("purge", help="drop one dead letter, or all of them (with --yes)")
    dlq_purge.add_argument("id", nargs="?", help="only this one")
    dlq_purge.add_argument("--yes", action="store_true", help="confirm dropping every dead letter")
    dlq_purge.set_defaults(func=cmd_dlq_purge)

    sweep = sub.add_parser("sweep", help="re-drive sagas past their deadline, once (beat does it periodically)")
    sweep.set_defaults(func=cmd_sweep)

    health = sub.add_parser("health", help="broker, databases, a worker per queue; exit 1 if any fails")
    health.add_argument(
        "--service",
        action="append",
        metavar="SERVICE",
        help="check only what this service (or extension) needs (repeatable): order, inventory, payment, "
        "shipping, or a name in CHECKOUT_EXTENSIONS",
    )
    health.add_argument(
        "--this-host",
        action="store_true",
        help="count only the workers named <service>@<this host> (-n <service>@%%h): a container's own",
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each answer (default 2)")
    health.set_defaults(func=cmd_health)

    metrics = sub.add_parser(
        "metrics", help="serve saga metrics for Prometheus (orders, steps, dead letters, queue depths)"
    )
    metrics.add_argument("--port", type=int, default=9808, help="port to listen on (default 9808)")
    metrics.add_argument(
        "--address", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    metrics.add_argument("--once", action="store_true", help="print one scrape's text to stdout and exit")
    metrics.set_defaults(func=cmd_metrics)

    relay = sub.add_parser(
        "relay",
        help="send what every service's outbox still holds, every CHECKOUT_OUTBOX_SWEEP_SECONDS, until stopped",
        description="The outbox relay: every CHECKOUT_OUTBOX_SWEEP_SECONDS, send the events any service's outbox "
        "still holds (older than CHECKOUT_OUTBOX_GRACE_SECONDS), logging what it sent; its log lines follow "
        "CHECKOUT_LOG_FORMAT, like the workers'. Stops on SIGTERM or SIGINT.",
    )
    relay.add_argument("--once", action="store_true", help="one round, then exit (1 if something was left)")
    relay.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if the running relay's heartbeat (CHECKOUT_RELAY_HEARTBEAT_FILE) is fresh, else 1",
    )
    relay.set_defaults(func=cmd_relay)

    db = sub.add_parser("db", help="database chores")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    init = db_sub.add_parser(
        "init", help="create missing tables (or check a migrated database is current) and seed catalog and stock"
    )
    init.set_defaults(func=cmd_db_init)
    upgrade = db_sub.add_parser(
        "upgrade", help="migrate every service's database to this version's schema (adopts one from before)"
    )
    upgrade.add_argument("--sql", action="store_true", help="print the SQL from an empty database instead")
    upgrade.add_argument("--service", action="append", choices=SERVICE_NAMES, help="only this service (repeatable)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    current = db_sub.add_parser("current", help="each service's schema revision and the head; exit 1 if behind")
    current.add_argument("--service", action="append", choices=SERVICE_NAMES, help="only this service (repeatable)")
    current.set_defaults(func=cmd_db_current)
    history = db_sub.add_parser("history", help="each service's migrations, newest first")
    history.add_argument("--service", action="append", choices=SERVICE_NAMES, help="only this service (repeatable)")
    history.set_defaults(func=cmd_db_history)

    replay = sub.add_parser(
        "replay",
        help="send logged events again to a consumer, or rebuild the order projection from the logs",
        usage="python -m app replay [--order ID] [--type TYPE]... [--since TIME] --to CONSUMER [--dry-run]\n"
        "       python -m app replay --rebuild orders",
        description=REPLAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chosen = replay.add_argument_group("which events (at least one; an event must match each given)")
    chosen.add_argument("--order", metavar="ID", help="the events of this order")
    chosen.add_argument(
        "--type", action="append", metavar="TYPE", help="events of this type, e.g. PaymentCaptured (repeatable)"
    )
    chosen.add_argument(
        "--since", type=_since, metavar="TIME", help="events since this ISO 8601 time (UTC unless it says) or age (15m)"
    )
    replay.add_argument("--to", metavar="CONSUMER", help="the consumer task, e.g. order.record or inventory.commit")
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be sent (by type, then each); send nothing"
    )
    replay.add_argument(
        "--show", type=int, default=20, metavar="N", help="with --dry-run: list the first N events (20)"
    )
    replay.add_argument(
        "--timeout", type=float, default=60.0, help="embedded: seconds to wait for the events to be handled (60)"
    )
    replay.add_argument(
        "--rebuild",
        choices=("orders",),
        help="instead: rebuild the order projection from the logs and print its diff against the live one",
    )
    replay.set_defaults(func=cmd_replay, replay_parser=replay)

    analytics = sub.add_parser(
        "analytics",
        help="sales by day: orders completed and their revenue, orders cancelled and why (CHECKOUT_EXTENSIONS=analytics)",
        description="Sales by UTC day, from the analytics extension's own tables: orders completed and their "
        "revenue per currency, orders cancelled and why. The extension follows OrderCompleted and "
        "OrderCancelled on its own queue; a new installation catches up on history with\n"
        "  python -m app replay --type OrderCompleted --type OrderCancelled --to analytics.handle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    analytics.add_argument("--days", type=int, metavar="N", help="only the last N days, today included")
    analytics.add_argument("--json", action="store_true", help="print JSON (amounts in minor units)")
    analytics.set_defaults(func=cmd_analytics)

    events = sub.add_parser("events", help="the event graph: who consumes what, in either saga mode")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    graph = events_sub.add_parser("graph", help="print the event graph (Mermaid flowchart) from the subscription table")
    graph.add_argument(
        "--mode", choices=("orchestration", "choreography"), help="saga mode (default: CHECKOUT_SAGA_MODE)"
    )
    graph.set_defaults(func=cmd_events_graph)
    check = events_sub.add_parser(
        "check", help="exit 1 naming each event with no consumer or failure event with no path to a compensation"
    )
    check.add_argument(
        "--mode",
        choices=("orchestration", "choreography", "all"),
        help="saga mode, or all of them (default: CHECKOUT_SAGA_MODE)",
    )
    check.set_defaults(func=cmd_events_check)

    settings = sub.add_parser("settings", help="every CHECKOUT_* variable, its value here and its meaning")
    settings.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_log_format(args.log_format)
    started = time.monotonic()
    try:
        return int(args.func(args))
    except ValidationError as exc:  # the settings: name the variable, say what is wrong
        print("configuration error (see `python -m app settings --help`):", file=sys.stderr)
        for error in exc.errors(include_url=False):
            name = "CHECKOUT_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else "settings"
            print(f"  {name}: {error['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.1f}s", file=sys.stderr)
        return 130
