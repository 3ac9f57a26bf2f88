"""Logging policy: expected business outcomes are not errors."""

from __future__ import annotations

import logging

from app.domain.errors import StepFailed


class ExpectedChordFailures(logging.Filter):
    """Celery logs a chord whose header task failed as an ERROR with a traceback. When the
    failure is a recorded business or exhausted-retry failure (``StepFailed``), that is an
    expected saga outcome: keep the line, at INFO, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Chord") and StepFailed.__name__ in str(record.args):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


_installed = False


def quiet_expected_failures() -> None:
    """Install :class:`ExpectedChordFailures` on Celery's result-backend loggers (once)."""
    global _installed
    if _installed:
        return
    # base and redis join chords natively; the database backend joins them in chord_unlock
    for name in ("celery.backends.base", "celery.backends.redis", "celery.app.builtins"):
        logging.getLogger(name).addFilter(ExpectedChordFailures())
    _installed = True
