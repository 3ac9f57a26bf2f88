"""``python -m app``: the command line — one module per command group, assembled in
:mod:`app.cli.root`. Importing the package loads none of it (the demo's test vocabulary,
say, comes without the command line); :func:`main` loads it on first use."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line (``sys.argv`` by default); its exit status."""
    from app.cli.root import main as run

    return run(argv)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """A command line parsed and checked without running it (see :func:`app.cli.root.parse_args`)."""
    from app.cli.root import parse_args as parse

    return parse(argv)
