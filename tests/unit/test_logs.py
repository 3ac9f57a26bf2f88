"""A business failure in the parallel phase is logged as an outcome, not as an error."""

import logging

import pytest

from app.domain.errors import StepFailed
from app.operations.logs import quiet_expected_failures


def log_chord_failure(exc: Exception, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    quiet_expected_failures()
    logger = logging.getLogger("celery.backends.base")
    with caplog.at_level(logging.DEBUG, logger="celery.backends.base"):
        try:
            raise exc
        except Exception:
            logger.exception("Chord %r raised: %r", "g-1", f"Dependency x raised {exc!r}")
    return caplog.records[-1]


def test_step_failure_is_demoted(caplog: pytest.LogCaptureFixture) -> None:
    record = log_chord_failure(StepFailed("authorize_payment", "card_declined"), caplog)
    assert record.levelno == logging.INFO and record.exc_info is None


def test_other_chord_errors_stay_errors(caplog: pytest.LogCaptureFixture) -> None:
    record = log_chord_failure(RuntimeError("bug"), caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
