"""Ports to the external systems the services call. Adapters live in ``app/adapters``
(and, for :class:`SagaDispatcher`, in ``app/messaging``).

The payment gateway and the carrier promise idempotency by ``idempotency_key``: calling
twice with the same key has the effect of calling once and returns the same result (as
Stripe's idempotency keys do). That is what lets a step be retried or redelivered safely.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol

from app.domain.saga import Compensation, Saga
from app.domain.values import Address, Line


class PaymentGateway(ABC):
    """Authorizes, captures, voids and refunds card payments.

    Raises :class:`app.domain.errors.BusinessFailure` for a decline (never retried) and
    :class:`app.domain.errors.TransientFailure` when the gateway cannot be reached (retried).
    """

    @abstractmethod
    def authorize(self, token: str, amount_cents: int, currency: str, *, idempotency_key: str, reference: str) -> str:
        """Hold the amount on the card; returns the authorization reference."""

    @abstractmethod
    def capture(self, auth_ref: str, amount_cents: int, *, idempotency_key: str, reference: str) -> str:
        """Take the held amount; returns the capture reference."""

    @abstractmethod
    def void(self, auth_ref: str, *, idempotency_key: str, reference: str) -> None:
        """Release an authorization that was not captured."""

    @abstractmethod
    def refund(self, capture_ref: str, amount_cents: int, *, idempotency_key: str, reference: str) -> None:
        """Give a captured amount back."""

    @abstractmethod
    def find(self, idempotency_key: str) -> str | None:
        """The reference a call with this key returned, if one went through (None if none
        did): how a step learns what an attempt that crashed before recording it did."""


class Carrier(ABC):
    """Books and cancels shipments. Raises BusinessFailure where it does not deliver."""

    @abstractmethod
    def schedule(self, address: Address, lines: tuple[Line, ...], *, idempotency_key: str, reference: str) -> str:
        """Book a pickup; returns the tracking reference."""

    @abstractmethod
    def cancel(self, tracking_ref: str, *, idempotency_key: str, reference: str) -> None:
        """Cancel a booked shipment."""

    @abstractmethod
    def find(self, idempotency_key: str) -> str | None:
        """The tracking reference a call with this key returned, if one went through."""


class SagaDispatcher(Protocol):
    """Sends a saga's work on its way — the forward path or the compensations — for the
    order service's coordinator (:mod:`app.services.order.coordinator`), which decides what
    to send and when. The Celery adapter builds the canvas of ``app/messaging/canvas.py``.

    Sending is fire and forget: the steps report back through their events; a send lost
    on the way is made up for by the sweeper, from what the order recorded.
    """

    def run_saga(
        self, saga: Saga, order_id: str, commands: Mapping[str, dict[str, Any]], done: frozenset[str] = ...
    ) -> None:
        """Send the forward path of ``saga`` — the definition the order follows — (one
        command body per step), from the first phase with a step not in ``done``."""

    def run_compensation(
        self, saga: Saga, order_id: str, compensations: tuple[Compensation, ...], cancel_command: dict[str, Any]
    ) -> None:
        """Send the compensations, in the order given, then the order's cancellation (the
        task ``saga`` names)."""
