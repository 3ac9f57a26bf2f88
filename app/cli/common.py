"""What several commands share: a runtime over the configured databases, and the parsers of
values a command line gives (ages, times, service names, upper-cased choices)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import typer

from config.names import BUILTIN_EXTENSIONS, SERVICES

if TYPE_CHECKING:
    from app.bootstrap import Runtime
    from app.extensions import Extension

#: Who has a line of migrations: the services, and the extensions that ship with the system.
SERVICE_NAMES: tuple[str, ...] = SERVICES + tuple(BUILTIN_EXTENSIONS)

SagaMode = Literal["orchestration", "choreography"]

AGE_HINT = "give a number and a unit, like 90s, 15m, 2h or 3d"


def runtime() -> Runtime:
    """A runtime over the configured databases, with every table present (none is changed)."""
    from app.bootstrap import Runtime

    rt = Runtime()
    rt.trace("checkout-cli")
    rt.prepare()
    return rt


def parse_age(text: str) -> timedelta:
    """'90s', '15m', '2h', '3d' -> timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise typer.BadParameter(f"{text!r}: {AGE_HINT}")
    return timedelta(**{units[text[-1]]: float(text[:-1])})


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it has an offset) or an age like 15m -> aware datetime."""
    try:
        return datetime.now(UTC) - parse_age(text)
    except typer.BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give an ISO 8601 time (2026-05-01T12:00:00Z) or an age (90s, 15m, 2h, 3d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def one_of(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    """A parser accepting one of ``choices`` (any case, given as upper case, with ``upper``)."""

    def parse(text: str) -> str:
        value = text.upper() if upper else text
        if value not in choices:
            raise typer.BadParameter(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return value

    return parse


def choices_metavar(choices: tuple[str, ...]) -> str:
    return "{" + ",".join(choices) + "}"


def configured_mode(mode: str | None) -> str:
    """The saga mode asked for, or the configured one (CHECKOUT_SAGA_MODE)."""
    if mode:
        return mode
    from config.settings import load_settings

    return load_settings().saga_mode


def extensions() -> list[Extension]:
    """The extensions CHECKOUT_EXTENSIONS adds (their definitions, loaded)."""
    from app.extensions import load_all
    from config.settings import load_settings

    return list(load_all(load_settings().extension_targets).values())
