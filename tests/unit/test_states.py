"""The named states (app/domain/states.py): their values are what is stored, sent and
printed, and nothing in app/ spells a state out as a bare string any more."""

from __future__ import annotations

import ast
import json
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pytest
from kombu.utils.json import dumps as kombu_dumps
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import text

from app.api import validate_order
from app.domain.commands import ReserveInventory
from app.domain.events import Envelope, InventoryReserved
from app.domain.states import OPEN, SUCCEEDED, TERMINAL, Move, OrderStatus, SagaState, StepOutcome, Verdict
from app.domain.values import Line
from tests.conftest import Services

pytestmark = pytest.mark.timeout(60)

#: The values in the tables, on the wire and on the screen, as they were before they had names.
STORED: dict[type[StrEnum], dict[str, str]] = {
    OrderStatus: {
        "PENDING": "PENDING",
        "COMPLETED": "COMPLETED",
        "CANCELLED": "CANCELLED",
        "NEEDS_ATTENTION": "NEEDS_ATTENTION",
    },
    SagaState: {"RUNNING": "RUNNING", "COMPENSATING": "COMPENSATING", "DONE": "DONE"},
    StepOutcome: {"DONE": "done", "FAILED": "failed", "NOOP": "noop", "PREVENTED": "prevented"},
    Verdict: {"CONFIRMED": "confirmed", "CONTRADICTED": "contradicted", "UNCONFIRMED": "unconfirmed"},
    Move: {"COMPENSATING": "compensating", "NOT_DUE": "not due", "RESUMED": "resumed", "COMPENSATED": "compensated"},
}


def test_every_value_is_the_stored_one() -> None:
    for enum, values in STORED.items():
        assert {member.name: member.value for member in enum} == values, enum.__name__
        for member in enum:
            value = values[member.name]
            assert member == value and str(member) == value and f"{member}" == value
            assert "%s" % (member,) == value  # noqa: UP031 (how a log line formats it)
            assert json.dumps(member) == json.dumps(value) and kombu_dumps({"v": member}) == kombu_dumps({"v": value})
            assert enum(value) is member


def test_the_derived_sets() -> None:
    assert TERMINAL == {"COMPLETED", "CANCELLED"}
    assert OPEN == {"PENDING", "NEEDS_ATTENTION"}
    assert TERMINAL | OPEN == set(OrderStatus) and not TERMINAL & OPEN
    assert SUCCEEDED == {"done", "noop"}
    assert "done" in SUCCEEDED and "PENDING" in OPEN  # a plain value read from a table finds its member


def test_the_old_names_still_import() -> None:
    import app.services.order as order
    from app.domain import saga
    from app.services.order import coordinator, saga_memory

    assert order.TERMINAL is TERMINAL and order.OPEN is OPEN
    assert order.NEEDS_ATTENTION is OrderStatus.NEEDS_ATTENTION
    assert (order.CONFIRMED, order.CONTRADICTED, order.UNCONFIRMED) == tuple(Verdict)
    assert (order.COMPENSATING, order.NOT_DUE, order.RESUMED, order.COMPENSATED) == tuple(Move)
    assert saga_memory.CONFIRMED is Verdict.CONFIRMED and coordinator.COMPENSATED is Move.COMPENSATED
    assert (saga.DONE, saga.FAILED) == (StepOutcome.DONE, StepOutcome.FAILED)


@pytest.mark.parametrize("member", [m for enum in STORED for m in enum])
def test_postgres_is_sent_the_value_not_the_name(member: str) -> None:
    """psycopg sends a plain Enum by its name; a StrEnum must go as the string it is."""
    dumped = Transformer().get_dumper(member, PyFormat.AUTO).dump(member)
    assert dumped is not None and bytes(dumped) == str.__str__(member).encode()


def test_the_tables_hold_the_plain_values(services: Services) -> None:
    request = validate_order("cust-1", [{"sku": "MUG-01", "qty": 1}])
    order_id, _ = services.order.place(request)
    services.inventory.reserve(ReserveInventory(order_id=order_id, lines=(Line(sku="MUG-01", qty=1),)))
    services.order.record(Envelope.wrap(InventoryReserved(order_id=order_id, lines=[])))

    def raw(sql: str) -> tuple[object, ...]:
        found = services.dbs["order"].query(lambda c: c.execute(text(sql), {"id": order_id}).one())
        return tuple(found)

    assert raw("SELECT status, saga_state, steps FROM order_orders WHERE order_id = :id") == (
        "PENDING",
        "RUNNING",
        '{"reserve_inventory": "done"}',
    )
    assert raw("SELECT outcome FROM order_timeline WHERE order_id = :id AND event_type = 'InventoryReserved'") == (
        "done",
    )
    assert raw("SELECT outcome FROM inventory_steps WHERE order_id = :id AND step = 'reserve_inventory'") == ("done",)
    view = services.order.view(order_id)
    assert view.status is OrderStatus.PENDING and view.steps == {"reserve_inventory": StepOutcome.DONE}
    assert services.order.status(order_id) is OrderStatus.PENDING


# --- the scan -----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
DEFINITIONS = APP / "domain" / "states.py"
HISTORY = APP / "persistence" / "migrations" / "versions"  # revisions are history: left as written

#: The states the scan looks for: a string equal to one of these values, in app/, is a bare state.
GUARDED: tuple[type[StrEnum], ...] = (OrderStatus, SagaState, StepOutcome, Verdict)

#: Strings that share a state's spelling but name something else, and how many of each a
#: module may hold: a shipment's own status is CANCELLED too (the shipping service sets it,
#: the auditor checks it).
ALLOWED: dict[tuple[str, str], int] = {
    ("app/services/shipping.py", "CANCELLED"): 1,
    ("app/operations/audit.py", "CANCELLED"): 1,
}

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
HELP_KEYWORDS = {"help", "short_help", "epilog", "description", "metavar"}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _exempt(tree: ast.AST) -> set[int]:
    """Constants that are prose, not values: docstrings, log messages, help text, ``__all__``."""
    exempt = _docstrings(tree)
    for node in ast.walk(tree):
        inside: list[ast.AST] = []
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS:
                inside.extend(node.args)
            inside.extend(k.value for k in node.keywords if k.arg in HELP_KEYWORDS)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            inside.append(node.value)
        exempt.update(id(c) for part in inside for c in ast.walk(part) if isinstance(c, ast.Constant))
    return exempt


def bare_states(source: str, values: frozenset[str]) -> Iterator[tuple[int, str]]:
    """``(line, value)`` of every string constant in ``source`` equal to a state value."""
    tree = ast.parse(source)
    exempt = _exempt(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values:
            if id(node) not in exempt:
                yield node.lineno, node.value


def state_values() -> frozenset[str]:
    return frozenset(str(member) for enum in GUARDED for member in enum)


def test_no_bare_state_literal_in_the_package() -> None:
    values = state_values()
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(APP.rglob("*.py")):
        if path == DEFINITIONS or HISTORY in path.parents:
            continue
        module = path.relative_to(ROOT).as_posix()
        for line, value in bare_states(path.read_text(), values):
            found.setdefault((module, value), []).append(line)
    over = {
        f"{module}:{','.join(map(str, lines))}": value
        for (module, value), lines in found.items()
        if len(lines) > ALLOWED.get((module, value), 0)
    }
    assert not over, f"bare state literals (use app.domain.states): {over}"


def test_the_scan_finds_a_bare_state_and_spares_prose() -> None:
    source = '''
"""A module about PENDING orders."""
import logging
log = logging.getLogger(__name__)
__all__ = ["PENDING"]

def f(row, uow, opt):
    """done"""
    log.info("done")
    opt(help="COMPLETED")
    if row.status == "PENDING":
        uow.record_step("o", "s", StepRecord("done"))
    return {"failed": 1}, f"{row} done", "contradicted"
'''
    found = Counter(value for _, value in bare_states(source, state_values()))
    assert found == Counter({"PENDING": 1, "done": 1, "failed": 1, "contradicted": 1})
    lines = [line for line, _ in bare_states(source, state_values())]
    assert sorted(lines) == [11, 12, 13, 13]
