"""The message contracts: the committed schemas match the code, and ``schemas check`` tells a
breaking change from a compatible one — each rule shown on a copy of the real events, task
bodies or envelope, rebuilt with pydantic so that their schemas come from it like the
real ones'."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, create_model

from app.bootstrap import Runtime
from app.cli import main
from app.domain.commands import AuthorizePayment
from app.domain.contracts import Change, compare
from app.domain.events import (
    REGISTRY,
    VERSIONS,
    Envelope,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderPlacedV1,
    PaymentCaptured,
    PaymentDeclined,
)
from app.domain.saga import CHECKOUT
from app.domain.values import Address, Line
from app.messaging.tasks import task_bodies
from app.messaging.tasks.kit import BODY_MODEL
from app.operations.contracts import Contracts, Report, check, contracts, export
from config.names import SERVICES

pytestmark = pytest.mark.timeout(60)


def variant(model: type[BaseModel], *, drop: tuple[str, ...] = (), **fields: Any) -> type[BaseModel]:
    """``model`` rebuilt by pydantic with the fields ``drop`` names left out and ``fields``
    (``name=(type, Field(...))``) added or replaced, under the same name and base."""
    kept: dict[str, Any] = {
        name: (info.annotation, info) for name, info in model.model_fields.items() if name not in drop
    }
    kept.update(fields)
    if issubclass(model, Event):
        return create_model(model.__name__, __base__=Event, __doc__=model.__doc__, **kept)
    return create_model(model.__name__, __config__=model.model_config, __doc__=model.__doc__, **kept)


def events(**changed: type[BaseModel]) -> dict[str, Any]:
    """A copy of the registry with the models ``changed`` names replaced."""
    return {**REGISTRY, **changed}


def checked(tmp_path: Path, now: Contracts, before: Contracts | None = None) -> Report:
    """Export ``before`` (the real contracts by default) into a directory, then check ``now``
    against it."""
    export(tmp_path, before or contracts())
    return check(tmp_path, now)


def test_the_committed_contracts_are_those_of_the_code() -> None:
    report = check()
    stale = "the contracts under contracts/ are not the code's: run `make schemas` and commit them"
    assert (report.breaking, report.missing, report.compatible) == ([], [], []), stale
    assert report.current, stale


def test_the_task_bodies_are_what_the_registered_tasks_parse(rt: Runtime) -> None:
    """The catalogue of task bodies names, for every service task, the model it parses."""
    parsed = {
        name: getattr(task, BODY_MODEL)
        for name, task in rt.celery.tasks.items()
        if name.split(".", 1)[0] in SERVICES and getattr(task, BODY_MODEL, None) is not None
    }
    assert parsed == task_bodies(CHECKOUT)
    assert "order.sweep" in rt.celery.tasks  # the one service task with no body


BREAKING = {
    "removed field": (
        {"OrderCompleted": variant(OrderCompleted, drop=("currency",))},
        "event OrderCompleted v1: field currency: removed",
    ),
    "renamed field": (
        {
            "OrderCompleted": variant(
                OrderCompleted, drop=("currency",), currency_code=(str, OrderCompleted.model_fields["currency"])
            )
        },
        "event OrderCompleted v1: field currency: renamed to currency_code",
    ),
    "type changed": (
        {"PaymentCaptured": variant(PaymentCaptured, amount_cents=(str, Field()))},
        "event PaymentCaptured v1: field amount_cents: type changed from integer to string",
    ),
    "new required field": (
        {"OrderCancelled": variant(OrderCancelled, note=(str, Field(max_length=32)))},
        "event OrderCancelled v1: field note: new required field",
    ),
    "maximum lowered": (
        {"OrderPlaced": variant(OrderPlacedV1, total_cents=(int, Field(ge=0, le=1000)))},
        "event OrderPlaced v1: field total_cents: maximum lowered from 2147483647 to 1000",
    ),
    "minimum raised": (
        {"PaymentCaptured": variant(PaymentCaptured, amount_cents=(int, Field(ge=1, le=2**31 - 1)))},
        "event PaymentCaptured v1: field amount_cents: minimum raised from 0 to 1",
    ),
    "maxLength lowered": (
        {"OrderCancelled": variant(OrderCancelled, reason=(str, Field(min_length=1, max_length=16)))},
        "event OrderCancelled v1: field reason: maxLength lowered from 32 to 16",
    ),
    "pattern changed": (
        {"OrderCompleted": variant(OrderCompleted, currency=(str, Field(pattern=r"^[A-Z]{2}$")))},
        "event OrderCompleted v1: field currency: pattern changed from '^[A-Z]{3}$' to '^[A-Z]{2}$'",
    ),
    "nested bound lowered": (
        {"OrderPlaced": variant(OrderPlacedV1, lines=(tuple[variant(Line, qty=(int, Field(ge=1, le=10))), ...], ...))},
        "event OrderPlaced v1: field lines[].qty: maximum lowered from 1000 to 10",
    ),
}


@pytest.mark.parametrize("rule", BREAKING)
def test_a_breaking_change_to_an_event_fails_the_check_naming_event_version_and_field(
    rule: str, tmp_path: Path
) -> None:
    changed, line = BREAKING[rule]
    report = checked(tmp_path, contracts(registry=events(**changed)))
    assert not report.ok
    assert report.breaking == [line]


REASONS = Literal["declined", "insufficient_funds", "expired"]
FEWER_REASONS = Literal["declined", "insufficient_funds"]


def test_an_enum_narrowed_is_breaking_and_widened_compatible(tmp_path: Path) -> None:
    wide = contracts(registry=events(PaymentDeclined=variant(PaymentDeclined, reason=(REASONS, ...))))
    narrow = contracts(registry=events(PaymentDeclined=variant(PaymentDeclined, reason=(FEWER_REASONS, ...))))

    narrowed = checked(tmp_path / "narrowed", narrow, before=wide)
    assert narrowed.breaking == ["event PaymentDeclined v1: field reason: enum narrowed: 'expired' removed"]

    widened = checked(tmp_path / "widened", wide, before=narrow)
    assert widened.ok
    assert widened.compatible == ["event PaymentDeclined v1: field reason: enum widened: 'expired' added"]


def test_a_new_optional_field_or_a_bound_widened_is_compatible_and_named(tmp_path: Path) -> None:
    registry = events(
        OrderPlaced=variant(OrderPlacedV1, gift_note=(str | None, Field(None, max_length=200))),
        OrderCancelled=variant(OrderCancelled, reason=(str, Field(min_length=1, max_length=64))),
    )
    report = checked(tmp_path, contracts(registry=registry))
    assert report.ok and not report.current
    assert report.compatible == [
        "event OrderCancelled v1: field reason: maxLength raised from 32 to 64",
        "event OrderPlaced v1: field gift_note: new optional field",
    ]


def test_a_change_to_the_envelope_is_breaking(tmp_path: Path) -> None:
    envelope = variant(Envelope, drop=("key",), version=(str, Field(min_length=1)))
    report = checked(tmp_path, contracts(envelope=envelope))
    assert report.breaking == [
        "envelope v1: field key: removed",
        "envelope v1: field version: type changed from integer to string",
    ]


def test_a_breaking_change_to_a_task_body_names_the_task(tmp_path: Path) -> None:
    bodies = {
        **task_bodies(CHECKOUT),
        "payment.authorize": variant(AuthorizePayment, payment_token=(str, Field(min_length=8, max_length=64))),
    }
    report = checked(tmp_path, contracts(bodies=bodies))
    assert report.breaking == ["command payment.authorize v1: field payment_token: minLength raised from 1 to 8"]


def test_a_new_version_must_be_exported_and_the_old_one_removed_is_breaking(tmp_path: Path) -> None:
    bumped = variant(OrderCompleted)
    bumped.VERSION = 2  # type: ignore[attr-defined]
    missing = ["event OrderCompleted v2 (events/OrderCompleted.v2.json): run `python -m app schemas export`"]
    kept = checked(tmp_path / "kept", contracts(registry=events(OrderCompleted=bumped)))
    assert (kept.missing, kept.breaking) == (missing, [])  # v1 is still read: its contract stays
    without_v1 = {key: cls for key, cls in VERSIONS.items() if key != ("OrderCompleted", 1)}
    report = checked(tmp_path / "dropped", contracts(registry=events(OrderCompleted=bumped), versions=without_v1))
    assert report.missing == missing
    assert report.breaking == [
        "event OrderCompleted v1: version removed (no model in the code for events/OrderCompleted.v1.json)"
    ]


def test_compare_resolves_refs_in_pydantic_schemas() -> None:
    rebuilt = variant(OrderPlacedV1, ship_to=(variant(Address), ...))
    assert compare(OrderPlacedV1.model_json_schema(), rebuilt.model_json_schema()) == []
    fewer = variant(OrderPlacedV1, lines=(tuple[variant(Line, drop=("sku",)), ...], ...))
    removed = Change("lines[].sku", "removed", True)
    assert compare(OrderPlacedV1.model_json_schema(), fewer.model_json_schema()) == [removed]


NULLABLE = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
STRING, CLOSED = {"type": "string"}, {"type": "object", "additionalProperties": False}
EITHER = {"type": ["integer", "string"]}

PLAIN = [
    (NULLABLE, STRING, Change("", "no longer nullable", True)),
    (STRING, NULLABLE, Change("", "now nullable", False)),
    ({"type": "object"}, CLOSED, Change("", "unknown fields now refused", True)),
    ({"type": "integer"}, EITHER, Change("", "type widened from integer to integer/string", False)),
    (STRING, {**STRING, "format": "date-time"}, Change("", "format changed from None to 'date-time'", True)),
]


@pytest.mark.parametrize(("old", "new", "change"), PLAIN)
def test_compare_on_plain_schemas(old: dict[str, Any], new: dict[str, Any], change: Change) -> None:
    assert compare(old, new) == [change]
    assert compare(new, new) == []


def test_the_command_line_exports_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "export", "--dir", str(tmp_path)]) == 0
    files = len(contracts().files())
    assert capsys.readouterr().out == f"wrote {files} contract files under {tmp_path}\n"
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"contracts under {tmp_path}: up to date\n"

    committed = tmp_path / "events" / "OrderCompleted.v1.json"
    schema = json.loads(committed.read_text())
    del schema["properties"]["currency"]
    schema["required"].remove("currency")
    committed.write_text(json.dumps(schema))
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1
    shown = capsys.readouterr()
    assert shown.err == "breaking: event OrderCompleted v1: field currency: new required field\n"

    committed.write_text(contracts().files()["events/OrderCompleted.v1.json"])  # as exported again
    cancelled = tmp_path / "events" / "OrderCancelled.v1.json"
    schema = json.loads(cancelled.read_text())
    schema["properties"]["reason"]["maxLength"] = 16
    cancelled.write_text(json.dumps(schema))
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        "compatible: event OrderCancelled v1: field reason: maxLength raised from 16 to 32\n"
        f"contracts under {tmp_path}: compatible with the code; export to record the changes\n"
    )

    gone = tmp_path / "events" / "OrderCompleted.v0.json"
    gone.write_text(committed.read_text())
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1
    assert "breaking: event OrderCompleted v0: version removed" in capsys.readouterr().err
    assert main(["schemas", "export", "--dir", str(tmp_path)]) == 0
    assert not gone.exists()
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()

    committed.write_text("{not json")
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {committed}: not a JSON document") and error.count("\n") == 1
