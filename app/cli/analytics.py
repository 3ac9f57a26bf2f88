"""``python -m app analytics``: sales by day, from the analytics extension's own tables."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli.common import runtime
from app.cli.output import money, print_table

cli = typer.Typer()

HELP = """\
Sales by UTC day, from the analytics extension's own tables: orders completed and their
revenue per currency, orders cancelled and why. The extension follows OrderCompleted and
OrderCancelled on its own queue; a new installation catches up on history with

\b
  python -m app replay --type OrderCompleted --type OrderCancelled --to analytics.handle

Exit 2 unless CHECKOUT_EXTENSIONS names analytics.
"""

NOT_ON = (
    "sales analytics is not on: add analytics to CHECKOUT_EXTENSIONS in every process's "
    "environment, run its worker (celery -A workers.analytics worker -Q analytics), and feed it the "
    "history with: python -m app replay --type OrderCompleted --type OrderCancelled --to analytics.handle"
)


@cli.command(
    "analytics",
    help=HELP,
    short_help="sales by day: orders completed and their revenue, orders cancelled and why "
    "(CHECKOUT_EXTENSIONS=analytics)",
)
def analytics(
    days: Annotated[
        int | None, typer.Option("--days", metavar="N", help="only the last N days, today included")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (amounts in minor units)")] = False,
) -> int:
    import json
    from datetime import UTC, datetime, timedelta

    from app.analytics import NAME, sales_by_day

    rt = runtime()
    try:
        if NAME not in rt.extensions:
            print(f"error: {NOT_ON}", file=sys.stderr)
            return 2
        since = datetime.now(UTC).date() - timedelta(days=days - 1) if days else None
        sales = sales_by_day(rt.databases[NAME], since)
    finally:
        rt.close()
    if as_json:
        print(json.dumps([d.as_json() for d in sales], indent=2))
        return 0
    if not sales:
        print("no order has ended yet" + (f" in the last {days} day(s)" if days else ""))
        return 0
    table = []
    for d in sales:
        revenue = ", ".join(money(cents, currency) for currency, cents in sorted(d.revenue_cents.items()))
        reasons = ", ".join(f"{reason} {n}" for reason, n in d.reasons.most_common())
        table.append((d.day, d.completed, revenue or "-", d.cancelled, f"{d.cancelled / d.ended:.0%}", reasons))
    print_table(table, ("day (UTC)", "completed", "revenue", "cancelled", "cancel rate", "why cancelled"))
    return 0
