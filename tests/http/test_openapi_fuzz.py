"""Every operation of the served OpenAPI document, called with inputs schemathesis makes
from it, valid and invalid, and those that take an order's id also with a real order's: no
answer is a server error, and each answer's status, content type and body are ones the
document declares for that operation.

The schema is read from the running API (``/openapi.json`` over HTTP, uvicorn over an
embedded system), so whatever routes the application has when the test runs are covered.
Examples are bounded and derandomized: the same inputs each run, in well under a minute.

Each operation's cases are drawn with Hypothesis from schemathesis' strategy for it, not
through ``schemathesis.pytest.from_fixture``: that loader sets pytest's private
``Function._nodeid``, which pytest 9 no longer has.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import Case, GenerationMode, checks
from schemathesis.errors import FailureGroup

from app.domain.states import TERMINAL
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]

#: Cases per operation and generation mode.
EXAMPLES = 50


def fuzz(strategy: SearchStrategy[Case], base_url: str) -> None:
    """Call the API with EXAMPLES cases of ``strategy``; the first failure of a check raises."""

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def run(case: Case) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    run()


def finished_order(client: httpx.Client) -> str:
    """The id of an order placed and finished, for the operations that take an order's id:
    ids made up at random only ever reach their 404."""
    placed = client.post("/orders", json={"customer_id": "fuzz", "items": [{"sku": "MUG-01", "qty": 1}]})
    assert placed.status_code == 201, placed.text
    order_id: str = placed.json()["order_id"]
    wait_until(lambda: client.get(f"/orders/{order_id}").json()["status"] in TERMINAL, what="the order to finish")
    return order_id


def test_every_operation_answers_as_its_schema_says(base_url: str, client: httpx.Client) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6, [op.label for op in operations]
    known = finished_order(client)
    runs: list[tuple[str, SearchStrategy[Case]]] = []
    for operation in operations:
        runs += [(f"{operation.label} ({mode.value})", operation.as_strategy(mode)) for mode in GenerationMode]
        if "{order_id}" in operation.path:
            known_order = operation.as_strategy(path_parameters={"order_id": known})
            runs.append((f"{operation.label} (a known order)", known_order))
    failures, fuzzed = [], []
    for label, strategy in runs:
        try:
            fuzz(strategy, base_url)
        except Unsatisfiable:
            # nothing of it can be invalid (no parameters, or only a free-form string path
            # parameter): there are no negative cases to send
            assert label.endswith("(negative)"), label
            continue
        except (FailureGroup, Exception) as exc:  # every failing run reported at once, not only the first
            failures.append(f"{label}: {exc}")
        fuzzed.append(label)
    assert not failures, "\n\n".join(failures)
    # invalid input was sent where there is input to spoil: the order's body, the list's query
    # (and a real order's view checked against its schema)
    assert {"POST /orders (negative)", "GET /orders (negative)", "GET /orders/{order_id} (a known order)"} <= set(
        fuzzed
    )
