"""``python -m app schemas ...``: the message contracts — export them, check them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

cli = typer.Typer(
    name="schemas",
    help="The message contracts: the JSON Schema of each event type per version, of each task's "
    "message body and of the envelope, committed under contracts/. `export` writes them from the "
    "code; `check` compares the code with them and exits 1 on a change that breaks a reader.",
    short_help="the message contracts (JSON Schemas): export them, or check the code against them",
)


def _directory() -> Path:
    from app.operations.contracts import DEFAULT_DIR

    return DEFAULT_DIR


Directory = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="the contracts directory (default: contracts/ at the top of the repository)",
        file_okay=False,
        show_default=False,
    ),
]


@cli.command("export", short_help="write every contract's JSON Schema under contracts/")
def export(directory: Directory = None) -> int:
    """Write the JSON Schema of every event type (contracts/events/<type>.v<N>.json), every
    task's message body (contracts/commands/<task>.v1.json), the envelope
    (contracts/envelope.v1.json) and which contract each task takes (contracts/tasks.json):
    pretty, keys sorted, so that a change reads as a diff. Files of versions the code no
    longer has are removed. Prints how many files it wrote."""
    from app.operations.contracts import export as write

    target = directory or _directory()
    written = write(target)
    print(f"wrote {len(written)} contract files under {target}")
    return 0


@cli.command("check", short_help="exit 1 naming each change that breaks a committed contract")
def check(directory: Directory = None) -> int:
    """Compare the code's schemas with the committed contracts. Exit 1 with one line per
    problem (the contract, its version, the field) on a breaking change within a version: a
    field removed or renamed, a type changed, a new required field, a bound, pattern or enum
    narrowed, the envelope changed, a version removed; or on a contract missing from the
    directory (run export). Compatible changes (a new optional field, an enum or bound
    widened) are listed, exit 0."""
    from app.operations.contracts import check as compare

    target = directory or _directory()
    try:
        report = compare(target)
    except ValueError as exc:  # a committed file that is not a schema
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in report.breaking:
        print(f"breaking: {line}", file=sys.stderr)
    for line in report.missing:
        print(f"missing: {line}", file=sys.stderr)
    for line in report.compatible:
        print(f"compatible: {line}")
    if report.ok:
        state = "up to date" if report.current else "compatible with the code; export to record the changes"
        print(f"contracts under {target}: {state}")
    return 0 if report.ok else 1
