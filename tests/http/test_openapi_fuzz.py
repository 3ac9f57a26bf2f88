"""Every operation of the served OpenAPI document, called with inputs schemathesis makes
from it, valid and invalid: no answer is a server error, and each answer's status, content
type and body are ones the document declares for that operation.

The schema is read from the running API (``/openapi.json`` over HTTP, uvicorn over an
embedded system), so whatever routes the application has when the test runs are covered.
Examples are bounded and derandomized: the same inputs each run, in well under a minute.

Each operation's cases are drawn with Hypothesis from schemathesis' strategy for it, not
through ``schemathesis.pytest.from_fixture``: that loader sets pytest's private
``Function._nodeid``, which pytest 9 no longer has.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode, checks
from schemathesis.schemas import APIOperation

pytestmark = pytest.mark.timeout(120)

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]

#: Cases per operation and generation mode.
EXAMPLES = 50


def fuzz(operation: APIOperation, mode: GenerationMode, base_url: str) -> None:
    """Call ``operation`` with EXAMPLES cases of ``mode``; the first failure of a check raises."""

    @given(case=operation.as_strategy(mode))
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


def test_every_operation_answers_as_its_schema_says(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6, [op.label for op in operations]
    failures, fuzzed = [], []
    for operation in operations:
        for mode in GenerationMode:
            try:
                fuzz(operation, mode, base_url)
            except Unsatisfiable:
                # nothing of it can be invalid (no parameters, or only a free-form string path
                # parameter): there are no negative cases to send
                assert mode is GenerationMode.NEGATIVE, operation.label
                continue
            except Exception as exc:  # every failing operation reported at once, not only the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")
            fuzzed.append((operation.label, mode))
    assert not failures, "\n\n".join(failures)
    # invalid input was sent where there is input to spoil: the order's body, the list's query
    assert {("POST /orders", GenerationMode.NEGATIVE), ("GET /orders", GenerationMode.NEGATIVE)} <= set(fuzzed)
