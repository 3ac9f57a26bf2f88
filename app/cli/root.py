"""``python -m app``: the operator's and the curious user's command line, assembled.

Each command is a typed function in the module of its group (``orders``, ``dlq``, ``db``,
``events``) or family (``run``: demo and audit; ``place``; ``http``: api; ``ops``: sweep, health, metrics,
relay; ``replay``; ``analytics``; ``settings``). This module assembles them into one Typer
app and runs it, saying what went wrong the way it always has: a usage error is a usage
line and one ``error:`` line on stderr with exit 2, a bad setting names its variable
(exit 2), Ctrl-C says when (exit 130) — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from app.cli import analytics, db, dlq, events, http, ops, orders, place, replay, run, schemas, settings
from app.cli.output import interactive
from app.messaging.telemetry import use_log_format

PROG = "python -m app"

DESCRIPTION = """\
Checkout Saga: an event-driven checkout on Celery.

Configuration comes from CHECKOUT_* environment variables (`python -m app settings`
lists them). With none set, everything runs embedded in this process: an in-memory
broker, one worker thread pool per service, and a SQLite file under ./var.
"""

#: The command modules, in the order ``--help`` lists their commands.
MODULES = (run, place, http, orders, dlq, ops, db, replay, analytics, events, schemas, settings)

Command = TyperCommand | TyperGroup


def _log_level(text: str) -> str:
    level = text.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise typer.BadParameter(f"{text!r} is not a logging level (WARNING, INFO, DEBUG ...)")
    return level


def _logging(
    log_format: Annotated[
        Literal["text", "json"],
        typer.Option("--log-format", help="log lines as text for humans or JSON with correlation and causation ids"),
    ] = "text",
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            parser=_log_level,
            metavar="LEVEL",
            help="the least severe level logged: WARNING, INFO, DEBUG ...",
        ),
    ] = "WARNING",
) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_log_format(log_format)


def build(*, rich_help: bool = False) -> TyperGroup:
    """The command tree; its help drawn by Rich (for a terminal) or as plain text."""
    root = typer.Typer(
        help=DESCRIPTION,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich" if rich_help else None,
        context_settings={"help_option_names": ["-h", "--help"]},
        subcommand_metavar="COMMAND [ARGS]...",
    )
    root.callback()(_logging)
    for module in MODULES:
        root.add_typer(module.cli)
    command = typer.main.get_command(root)
    assert isinstance(command, TyperGroup)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line (``sys.argv`` by default); its exit status."""
    command = build(rich_help=interactive())
    started = time.monotonic()
    try:
        with command.make_context(PROG, _segments(command, sys.argv[1:] if argv is None else argv).argv()) as ctx:
            return int(command.invoke(ctx) or 0)
    except typer.Exit as exc:  # --help, or a command that stops early
        return exc.exit_code
    except typer.TyperException as exc:  # a usage error: an unknown option, a bad value, a missing argument
        return _usage_error(exc)
    except Exception as exc:
        if _bad_settings(exc):  # the settings: name the variable, say what is wrong
            return 2
        from app.persistence.migrations import SchemaNotCurrent

        if isinstance(exc, SchemaNotCurrent):  # its message names the revision and the command to run
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if not _broker_unreachable(exc):
            raise
        # a command that needs the broker, with the broker away
        print(
            f"error: the broker cannot be reached ({exc}); is it running? `python -m app health` checks each part",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.1f}s", file=sys.stderr)
        return 130


def _bad_settings(exc: Exception) -> bool:
    """Say what is wrong with the settings, if that is what ``exc`` is."""
    from pydantic import ValidationError  # loaded already if that is what was raised

    from app.domain.events import UnwritableVersion

    if isinstance(exc, UnwritableVersion):  # a setting only the code can check: its message names it
        print(f"configuration error (see `python -m app settings --help`):\n  {exc}", file=sys.stderr)
        return True
    if not isinstance(exc, ValidationError):
        return False
    print("configuration error (see `python -m app settings --help`):", file=sys.stderr)
    for error in exc.errors(include_url=False):
        name = "CHECKOUT_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else "settings"
        print(f"  {name}: {error['msg']}", file=sys.stderr)
    return True


def _broker_unreachable(exc: Exception) -> bool:
    from app.messaging import BrokerUnreachable  # loaded already if that is what was raised

    return isinstance(exc, BrokerUnreachable)


def _usage_error(exc: typer.TyperException) -> int:
    """The usage line and one ``error:`` line, plainly (no box, no colour), as argparse did."""
    ctx = getattr(exc, "ctx", None)  # the command whose line it is, for a usage error
    message = exc.format_message().replace("Value error, ", "")  # a parser's own words, without pydantic's prefix
    if ctx is None:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    else:
        if isinstance(ctx.command, TyperGroup) and message.startswith(("Missing command", "No such command")):
            message = f"{message.rstrip('.')} (choose from {', '.join(ctx.command.commands)})"
        print(ctx.get_usage().replace("Usage: ", "usage: ", 1), file=sys.stderr)
        print(f"{ctx.command_path}: error: {message}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))


@dataclass
class _Segment:
    """The part of a command line that belongs to one command of the tree."""

    name: str
    command: Command
    args: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # from a command name the group does not have


@dataclass
class _Line:
    segments: list[_Segment]

    def argv(self) -> list[str]:
        first, *rest = self.segments
        line = [*first.args, *first.unknown]
        for segment in rest:
            line += [segment.name, *segment.args, *segment.unknown]
        return line


def _options(command: Command) -> dict[str, bool]:
    """Each option name of the command (long and short), and whether it takes a value."""
    names = {"--help": False, "-h": False}
    for param in command.params:
        if param.param_type_name == "option":
            takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
            names.update(dict.fromkeys([*param.opts, *param.secondary_opts], takes_value))
    return names


def _long_option(options: dict[str, bool], given: str) -> str:
    """The long option ``given`` names: itself, or the one it is the only prefix of (argparse
    took ``--mer`` for ``--mermaid``); unknown or ambiguous ones are left for the parser to refuse."""
    if given in options:
        return given
    matches = [name for name in options if name.startswith("--") and name.startswith(given)]
    return matches[0] if len(matches) == 1 else given


def _segments(root: TyperGroup, argv: Sequence[str]) -> _Line:
    """Split a command line by the command each token belongs to, expanding abbreviated long
    options on the way."""
    segments = [_Segment(PROG, root)]
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token, segment, options = tokens[i], segments[-1], _options(segments[-1].command)
        i += 1
        if token == "--":
            segment.args += tokens[i - 1 :]
            break
        if token.startswith("-") and token != "-":
            name, equals, value = token.partition("=")
            name = _long_option(options, name) if name.startswith("--") else name
            segment.args.append(name + equals + value)
            if options.get(name) and not equals and i < len(tokens):
                segment.args.append(tokens[i])
                i += 1
            continue
        if isinstance(segment.command, TyperGroup):
            sub = segment.command.commands.get(token)
            if isinstance(sub, TyperCommand | TyperGroup):
                segments.append(_Segment(token, sub))
                continue
            segment.unknown = tokens[i - 1 :]
            break
        segment.args.append(token)
    return _Line(segments)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """What a command line asks for, without running it: ``command`` (the top-level command),
    ``<group>_command`` for a group's, and each option (by its long name, as argparse named
    them: ``--this-host`` is ``this_host``) and argument, parsed and checked. One that is not
    valid says why on stderr and raises SystemExit(2), as running it would."""
    line = _segments(build(), argv)
    first, *rest = line.segments
    values: dict[str, object] = {}
    try:
        ctx = first.command.make_context(first.name, [*first.args, *first.unknown])
        values.update(_named(first.command, ctx.params))
        above = "command"  # what argparse called the choice of a subcommand: command, then dlq_command ...
        for segment in rest:
            values[above] = segment.name
            ctx = segment.command.make_context(segment.name, [*segment.args, *segment.unknown], parent=ctx)
            values.update(_named(segment.command, ctx.params))
            above = f"{segment.name}_command"
        last = line.segments[-1]
        if isinstance(last.command, TyperGroup):
            if last.unknown:
                last.command.resolve_command(ctx, last.unknown)
            ctx.fail("Missing command.")
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.TyperException as exc:
        raise SystemExit(_usage_error(exc)) from None
    return argparse.Namespace(**values)


def _named(command: Command, params: dict[str, object]) -> dict[str, object]:
    """A command's parsed values, options by their long name (``--all`` is ``all``)."""
    named = dict(params)
    for param in command.params:
        long_names = [opt for opt in param.opts if opt.startswith("--")]
        if param.param_type_name == "option" and long_names and param.name in named:
            named[long_names[0][2:].replace("-", "_")] = named.pop(param.name)
    return named
