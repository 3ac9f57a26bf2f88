"""The command line's own behaviour, in process: help on every command and group, plain usage
errors, argparse's abbreviations, typed options, tables for a terminal and for a pipe, and
the one-way import between the demo and the command line."""

from __future__ import annotations

import io
import re
import typing
from collections.abc import Iterator

import grimp
import pytest
from typer.core import TyperCommand, TyperGroup

from app.cli import main, parse_args
from app.cli import output as out
from app.cli.root import PROG, build

pytestmark = pytest.mark.timeout(60)

ANSI = re.compile(r"\x1b\[")
BOX = re.compile("[╭╮╰╯│┃━]")


def tree() -> Iterator[tuple[list[str], TyperCommand | TyperGroup]]:
    """Every command and group of ``python -m app`` (the root first), with its path."""
    stack: list[tuple[list[str], TyperCommand | TyperGroup]] = [([], build())]
    while stack:
        path, command = stack.pop(0)
        yield path, command
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                assert isinstance(sub, TyperCommand | TyperGroup)
                stack.append(([*path, name], sub))


def test_the_tree_has_every_command() -> None:
    paths = {" ".join(path) for path, _ in tree()}
    assert paths >= {
        "demo", "audit", "catalog", "place", "sweep", "health", "metrics", "relay", "replay", "analytics", "settings",
        "orders show", "orders list", "orders attention", "orders retry",
        "dlq list", "dlq show", "dlq redrive", "dlq purge",
        "db init", "db upgrade", "db current", "db history",
        "events graph", "events check", "schemas export", "schemas check",
    }  # fmt: skip


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_explains_every_command_and_group(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    for path, command in tree():
        assert main([*path, flag]) == 0, path
        shown, errors = capsys.readouterr()
        assert not errors, (path, errors)
        assert shown.startswith(f"Usage: {' '.join([PROG, *path])} "), (path, shown[:200])
        help_text = " ".join((command.help or "").split())
        assert len(help_text) >= 12, f"{' '.join(path)}: no help text"
        assert help_text[:30] in " ".join(shown.split()), (path, shown)
        for param in command.params:  # every option and argument is explained
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"{' '.join(path)} {param.opts[0]}: no help"
                assert param.opts[0] in shown
        if isinstance(command, TyperGroup):
            assert all(name in shown for name in command.commands), path
        assert not ANSI.search(shown) and not BOX.search(shown), f"{path}: help for a pipe is plain text"


def test_help_on_a_terminal_is_drawn_by_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("app.cli.root.interactive", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["orders", "list", "--help"]) == 0
    shown = capsys.readouterr().out
    assert BOX.search(shown) and "--older-than" in shown


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["orders", "list", "--status", "bogus"], "invalid choice: 'bogus'"),
        (["orders", "list", "--limit", "x"], "--limit"),
        (["orders", "list", "--older-than", "5x"], "'5x': give a number and a unit"),
        (["orders", "show"], "Missing argument 'ORDER_ID'"),
        (["orders"], "Missing command (choose from show, list, attention, retry)"),
        (["orders", "bogus"], "No such command 'bogus'"),
        (["bogus"], "No such command 'bogus'"),
        (["place"], "Missing argument 'SKU[:QTY]'"),
        (["db", "current", "--service", "nobody"], "invalid choice: 'nobody'"),
        (["events", "check", "--mode", "sideways"], "'sideways' is not one of"),
        (["replay", "--since", "yesterday", "--to", "order.record"], "'yesterday': give an ISO 8601 time"),
        (["replay", "--to", "order.record"], "choose the events"),
        (["replay", "--rebuild", "orders", "--to", "order.record"], "--rebuild goes alone"),
        (["replay", "--s", "2h"], "No such option: --s"),  # --since or --show: ambiguous
        (["--log-level", "loud", "catalog"], "'loud' is not a logging level"),
        (["--log-format", "xml", "catalog"], "'xml' is not one of 'text', 'json'"),
        (["health", "--bogus"], "No such option: --bogus"),
    ],
)
def test_a_usage_error_is_a_usage_line_and_one_error_line(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    shown, errors = capsys.readouterr()
    assert not shown
    assert errors.startswith("usage: python -m app"), errors  # the usage line (it may wrap), then
    *_usage, error = errors.rstrip("\n").splitlines()  # one line saying what is wrong
    assert re.match(r"python -m app[a-z ]*: error: ", error) and complaint in error, errors
    assert errors.count("error:") == 1
    assert "Traceback" not in errors and not ANSI.search(errors) and not BOX.search(errors)


def test_unique_prefixes_of_long_options_work_as_with_argparse() -> None:
    args = parse_args(["orders", "list", "--stat", "cancelled", "--lim", "3", "--newer", "1h"])
    assert (args.status, args.limit, args.newer_than.total_seconds()) == ("CANCELLED", 3, 3600)
    assert parse_args(["--log-l", "info", "relay", "--che"]).check is True
    assert parse_args(["orders", "show", "X", "--merm"]).mermaid is True


def test_parse_args_names_what_argparse_named() -> None:
    health = parse_args(["health", "--service", "order", "--service", "payment", "--this-host", "--timeout", "5"])
    assert vars(health) == {
        "log_format": "text",
        "log_level": "WARNING",
        "command": "health",
        "service": ["order", "payment"],
        "this_host": True,
        "timeout": 5.0,
    }
    listed = parse_args(["dlq", "list", "--all"])
    assert (listed.command, listed.dlq_command, listed.all, listed.order) == ("dlq", "list", True, None)
    placed = parse_args(["place", "MUG-01:2", "TEE-01", "--no-wait"])
    assert (placed.items, placed.no_wait, placed.token, placed.timeout) == (
        ["MUG-01:2", "TEE-01"],
        True,
        "tok_ok",
        30.0,
    )
    with pytest.raises(SystemExit) as refused:
        parse_args(["metrics", "--port", "many"])
    assert refused.value.code == 2


def test_no_option_is_typed_any() -> None:
    for path, command in tree():
        if command.callback is None:
            continue
        hints = typing.get_type_hints(command.callback.__wrapped__)  # type: ignore[attr-defined]
        hints.pop("return", None)
        for name, hint in hints.items():
            assert hint is not typing.Any and "Any" not in str(hint), f"{' '.join(path)} {name}: {hint}"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS = [
    ("e6976ac4", "payment", "payment.authorize", "retries exhausted (5): payment_unavailable", 6, None),
    ("1d117d4b", "inventory", "inventory.reserve", "out_of_stock", 1, "2m ago"),
]
HEADERS = ("id", "queue", "task", "reason", "attempts", "last")


def test_a_table_for_a_pipe_is_plain_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stdout", pipe)
    out.print_table(ROWS, HEADERS)
    assert pipe.getvalue() == (
        "id        queue      task               reason                                      attempts  last\n"
        "--------  ---------  -----------------  ------------------------------------------  --------  ------\n"
        "e6976ac4  payment    payment.authorize  retries exhausted (5): payment_unavailable  6\n"
        "1d117d4b  inventory  inventory.reserve  out_of_stock                                1         2m ago\n"
    )


@pytest.mark.parametrize("width", [140, 80, 40])
def test_a_table_on_a_terminal_is_rich_and_never_cut(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setenv("COLUMNS", str(width))
    out.print_table(ROWS, HEADERS)
    drawn = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())  # the header's bold
    assert "─" in drawn and "--------" not in drawn  # Rich's rule under the header, not dashes
    assert all(len(line) <= width for line in drawn.splitlines())
    assert "…" not in drawn
    letters = sorted(c for c in drawn if not c.isspace() and c != "─")
    given = sorted(c for text in [*HEADERS, *(str(c) for row in ROWS for c in row if c is not None)] for c in text)
    assert letters == [c for c in given if not c.isspace()], "a table on a terminal shows every character"
    if width >= 140:  # room for everything: each row on one line
        assert len(drawn.splitlines()) == 4 and "payment.authorize" in drawn


def test_the_demo_does_not_import_the_command_line() -> None:
    graph = grimp.build_graph("app")
    commands = {m for m in graph.find_children("app.cli")} - {"app.cli.demo", "app.cli.output"}
    assert "app.cli.root" in commands and "app.cli.run" in commands
    for module in commands:
        assert not graph.chain_exists("app.cli.demo", module), f"app.cli.demo imports {module}"
    assert graph.chain_exists("app.cli.run", "app.cli.demo")
    modules = sorted(graph.find_children("app.cli"))
    for a in modules:
        for b in modules:
            if a < b and graph.chain_exists(a, b) and graph.chain_exists(b, a):
                raise AssertionError(f"an import loop: {a} <-> {b}")


#: What a command that runs the system loads, and help or a usage error must not: Celery,
#: kombu, SQLAlchemy, Alembic, the settings, Rich and the JSON log formatter. (pydantic
#: itself comes with Typer's own parameter adapters, for any subcommand.)
HEAVY = {
    "celery",
    "opentelemetry",  # traces: only when OTEL_* or CHECKOUT_TRACE_FILE asks, never for --help
    "kombu",
    "amqp",
    "sqlalchemy",
    "alembic",
    "pydantic_settings",
    "rich",
    "pythonjsonlogger",
}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["orders", "--help"],
        ["orders", "show", "--help"],
        ["dlq", "redrive", "--help"],
        ["orders", "--nope"],
    ],
    ids=" ".join,
)
def test_help_and_usage_errors_load_nothing_heavy(argv: list[str]) -> None:
    """Start-up is fast because nothing heavy is imported before a command needs it (timed
    in the closing notes, not here: this box's speed varies; what is loaded does not)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom app.cli import main\n"
        f"code = main({argv!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}), code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded_line, code = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert int(code) == (2 if "--nope" in argv else 0), done.stdout + done.stderr
    loaded = set(eval(loaded_line))  # noqa: S307  (our own subprocess's printed list)
    assert loaded & HEAVY == set(), f"{' '.join(argv)} loaded {sorted(loaded & HEAVY)}"


def test_a_command_that_runs_the_system_loads_it() -> None:
    """The probe above sees what a command loads: `catalog` needs the system."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom app.cli import main\nmain(['catalog'])\nprint(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert {"celery", "sqlalchemy", "pydantic_settings"} <= set(eval(done.stdout.strip().splitlines()[-1]))  # noqa: S307
