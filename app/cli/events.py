"""``python -m app events ...``: the event graph — who consumes what, in either saga mode."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer

from app.cli.common import SagaMode, configured_mode, extensions

cli = typer.Typer(
    name="events",
    help="The event graph: which consumer task handles each event, and what each emits, in either "
    "saga mode, from the subscription table (and the extensions CHECKOUT_EXTENSIONS adds).",
    short_help="the event graph: who consumes what, in either saga mode",
)


@cli.command("graph", short_help="print the event graph (Mermaid flowchart) from the subscription table")
def graph(
    mode: Annotated[
        SagaMode | None, typer.Option("--mode", help="saga mode (default: CHECKOUT_SAGA_MODE)", show_default=False)
    ] = None,
) -> int:
    """Print the event graph of a saga mode as a Mermaid flowchart: each event, the consumer
    tasks that handle it and the events they emit."""
    from app.operations.eventgraph import mermaid

    print(mermaid(configured_mode(mode), extensions()))
    return 0


@cli.command(
    "check", short_help="exit 1 naming each event with no consumer or failure event with no path to a compensation"
)
def check(
    mode: Annotated[
        Literal["orchestration", "choreography", "all"] | None,
        typer.Option("--mode", help="saga mode, or all of them (default: CHECKOUT_SAGA_MODE)", show_default=False),
    ] = None,
) -> int:
    """Check the event graph: every event has a consumer and every failure event reaches a
    compensation. Exit 1 naming each problem on stderr."""
    from app.domain.subscriptions import MODES
    from app.operations.eventgraph import problems

    modes = MODES if mode == "all" else (configured_mode(mode),)
    loaded = extensions()
    found = [problem for each in modes for problem in problems(each, extensions=loaded)]
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if not found:
        print(f"event graph: every event has a consumer and every failure reaches a compensation ({', '.join(modes)})")
    return 1 if found else 0
