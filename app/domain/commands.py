"""Commands: requests for a service to do (or undo) one saga step.

A command carries everything the receiving service needs, because no service reads
another's tables. Every step task takes exactly one argument, a command as a JSON object.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from app.domain.events import CURRENCY_PATTERN
from app.domain.values import MAX_INT, MAX_LINES, Address, Line, Lines, Text


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(min_length=1, max_length=64)


class ReserveInventory(Command):
    lines: Lines = Field(min_length=1, max_length=MAX_LINES)


class ReleaseInventory(Command):
    pass


class AuthorizePayment(Command):
    amount_cents: int = Field(ge=0, le=MAX_INT)
    currency: str = Field(pattern=CURRENCY_PATTERN)
    payment_token: str = Field(min_length=1, max_length=64)


class VoidPayment(Command):
    pass


class CapturePayment(Command):
    pass


class RefundPayment(Command):
    pass


class ScheduleShipment(Command):
    ship_to: Address
    lines: tuple[Line, ...] = Field(min_length=1, max_length=MAX_LINES)


class CancelShipment(Command):
    pass


class CompleteOrder(Command):
    pass


class CompensateOrder(Command):
    """The saga failed at ``failed_step``: undo every step up to and including it.

    ``reason`` is given when an operator compensates (no failure event will say why).
    """

    failed_step: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(None, max_length=32)


class CancelOrder(Command):
    """Sent after the compensations: the order may now be cancelled."""


class PlaceOrder(BaseModel):
    """A customer's request to buy; validated at the edge before anything is written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")
    items: Lines = Field(min_length=1, max_length=MAX_LINES)
    payment_token: str = Field("tok_ok", min_length=1, max_length=64, pattern=r"^tok_[A-Za-z0-9_]+$")
    ship_to: Address
    currency: str = Field("EUR", pattern=CURRENCY_PATTERN)
    idempotency_key: Text | None = Field(None, min_length=1, max_length=128)

    def fingerprint(self) -> str:
        """What the order asks for, as a digest: the same for the same order however its JSON
        was written (key order, a default spelt out), different for any other. Stored with the
        idempotency key, so that the key given again with another order is told apart."""
        asked = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(json.dumps(asked, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ParkOrder(Command):
    """A compensation could not finish: the saga waits for an operator."""

    step: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=255)
