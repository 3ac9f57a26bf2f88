"""``python -m app settings``: every CHECKOUT_* variable, its value here and its meaning."""

from __future__ import annotations

import typer

from app.cli.output import print_table

cli = typer.Typer()


@cli.command("settings", short_help="every CHECKOUT_* variable, its value here and its meaning")
def settings() -> int:
    """Every CHECKOUT_* variable, the value this process sees (passwords and keys hidden) and
    what it means. A variable set to a value that is not valid is named, with why, on stderr
    (exit 2), by this and every other command."""
    from config.settings import Settings, variables

    current = Settings()
    rows = []
    for env, _default, description in variables():
        rows.append((env, current.shown(env.removeprefix("CHECKOUT_").lower()), description))
    print_table(rows, ("variable", "value", "meaning"))
    return 0
