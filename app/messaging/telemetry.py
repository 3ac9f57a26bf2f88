"""Correlation ids on every message, and structured logs that carry them.

Every task message gets two headers without any task setting them by hand:

* ``x_correlation_id`` — the saga (the order id): taken from the message being handled
  when one task causes another, else from the message itself (an event's correlation id,
  a command's order id);
* ``x_causation_id`` — the message that caused this one: the event it delivers, or else
  the task message being handled when it was sent.

While a task runs, both are bound to the log context, so every log line of a saga
(``CHECKOUT_LOG_FORMAT=json``, the default for workers) carries them.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

CORRELATION = "x_correlation_id"
CAUSATION = "x_causation_id"

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_causation: contextvars.ContextVar[str | None] = contextvars.ContextVar("causation_id", default=None)
_message: contextvars.ContextVar[str | None] = contextvars.ContextVar("message_id", default=None)
_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("task", default=None)


def current() -> dict[str, str | None]:
    return {
        "correlation_id": _correlation.get(),
        "causation_id": _causation.get(),
        "message_id": _message.get(),
        "task": _task.get(),
    }


def _first_argument(body: Any) -> Any:
    # protocol 2 bodies are (args, kwargs, embed); every task of ours takes one argument
    if isinstance(body, (list, tuple)) and body and isinstance(body[0], (list, tuple)) and body[0]:
        return body[0][0]
    return None


def stamp(headers: dict[str, Any], body: Any) -> None:
    """Add the correlation and causation headers to an outgoing task message."""
    message = _first_argument(body)
    is_event = isinstance(message, dict) and "event_id" in message and "correlation_id" in message
    if not headers.get(CORRELATION):
        correlation = _correlation.get()
        if correlation is None and isinstance(message, dict):
            correlation = message.get("correlation_id") or message.get("order_id")
        if correlation is not None:
            headers[CORRELATION] = str(correlation)
    if not headers.get(CAUSATION):
        causation = message["event_id"] if is_event else _message.get()
        if causation is not None:
            headers[CAUSATION] = str(causation)


class ContextFilter(logging.Filter):
    """Puts the current correlation, causation, message and task on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter  # only where lines are JSON

    return JsonFormatter(
        "{levelname}{name}{processName}{message}{correlation_id}{causation_id}{message_id}{task}",
        style="{",
        timestamp="time",  # ISO 8601, UTC
        rename_fields={"levelname": "level", "name": "logger", "processName": "process"},
    )


def use_log_format(log_format: str, logger: logging.Logger | None = None) -> None:
    """Give the logger's handlers (the root logger's by default) the context filter and,
    for ``json``, the JSON formatter."""
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(json_formatter())


_installed = False


def install(log_format: str) -> None:
    """Connect the signal handlers (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    from celery import signals  # here: a command that only logs needs no Celery

    @signals.before_task_publish.connect(weak=False)
    def _stamp(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
        if headers is not None:
            stamp(headers, body)

    @signals.task_prerun.connect(weak=False)
    def _bind(task: Any = None, task_id: str | None = None, **_: Any) -> None:
        request = task.request
        _correlation.set(request.get(CORRELATION))
        _causation.set(request.get(CAUSATION))
        _message.set(task_id)
        _task.set(task.name)

    @signals.task_postrun.connect(weak=False)
    def _unbind(**_: Any) -> None:
        for var in (_correlation, _causation, _message, _task):
            var.set(None)

    @signals.after_setup_logger.connect(weak=False)
    def _format(logger: logging.Logger | None = None, **_: Any) -> None:
        use_log_format(log_format, logger)

    @signals.after_setup_task_logger.connect(weak=False)
    def _format_tasks(logger: logging.Logger | None = None, **_: Any) -> None:
        use_log_format(log_format, logger)
