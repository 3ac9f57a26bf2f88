"""``python -m app demo`` and ``python -m app audit``: run the whole system on every test
input, and check what any run left behind."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import runtime

cli = typer.Typer()


@cli.command("demo", short_help="place one batch of orders covering every test input, then audit")
def demo(
    repeat: Annotated[int, typer.Option("--repeat", metavar="N", help="orders per test-vocabulary row")] = 3,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="seconds to wait for the batch")
    ] = 60.0,
) -> int:
    """Start the system embedded in this process (in-memory broker, SQLite, a worker pool per
    service), place a batch covering every row of the test vocabulary — each payment token,
    too little stock, an unserved country — and the inputs rejected at placement; print
    each outcome against the expected one, then the auditor's verdict. Exit 1 if the
    auditor finds a violation."""
    from app.cli import demo as batch

    return batch.run(repeat=repeat, timeout=timeout)


@cli.command("audit", short_help="check the invariants; exit 1 naming every violation")
def audit(
    settle: Annotated[
        float,
        typer.Option("--settle", metavar="SECONDS", help="re-check for up to this many seconds while sagas finish"),
    ] = 0.0,
    drain: Annotated[
        float,
        typer.Option(
            "--drain",
            metavar="SECONDS",
            help="first wait up to this long for the broker's service queues to empty (what is still queued "
            "is a violation either way: sagas in flight)",
        ),
    ] = 0.0,
) -> int:
    """Check the invariants over every service's tables: every order finished, stock is
    conserved per SKU and each completed order took its own lines, each order's money matches
    its outcome, its total and the gateway's books, its shipment the carrier's, every event
    is logged once, published and on its order's timeline, no dead letter (open or marked
    resolved) holds up a saga, and nothing is still queued on the broker. Exit 1 naming
    every violation; warnings (orders cancelled as deadline_exceeded) are listed with `!`
    and do not fail."""
    from app.operations.audit import audit as check

    rt = runtime()
    try:
        report = check(rt, settle=settle, drain=drain)
    finally:
        rt.close()
    print(report.summary())
    for violation in report.violations:
        print(f"  - {violation}")
    for warning in report.warnings:
        print(f"  ! {warning}")
    return 0 if report.clean else 1
