"""Failures cross the result store as JSON and come back as the same exception."""

import pytest
from celery import Celery

from app.domain.errors import BusinessFailure, StepFailed, TransientFailure


@pytest.mark.parametrize(
    "exc",
    [
        StepFailed("authorize_payment", "card_declined"),
        BusinessFailure("out_of_stock", "POSTER-01"),
        TransientFailure("payment_unavailable", "gateway timeout"),
    ],
)
def test_json_round_trip_keeps_type_and_reason(exc: Exception) -> None:
    backend = Celery("errors-test", set_as_current=False).backend
    back = backend.exception_to_python(backend.prepare_exception(exc, "json"))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.reason == exc.reason  # type: ignore[attr-defined]
