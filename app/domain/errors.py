"""The exceptions the product raises, split by what the caller should do about them."""

from __future__ import annotations


class CheckoutError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidOrder(CheckoutError, ValueError):
    """The order was rejected at placement; the message names the offending field.

    Nothing was written and nothing was enqueued.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class IdempotencyKeyReused(InvalidOrder):
    """The idempotency key was given before with a different order: nothing was placed, and
    the earlier order stands. (The same key with the same order returns the earlier one.)"""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(
            "idempotency_key",
            f"already used for another order ({order_id}) with different contents; use a new key for a new order",
        )


class OrderNotFound(CheckoutError, LookupError):
    """No order has this id."""


class UnknownSagaVersion(CheckoutError, LookupError):
    """An order started under a version of the saga definition this code no longer registers
    (``DEFINITIONS`` in ``app/domain/saga.py``): nothing moves it on until that version is
    registered again."""


class _NotInStatus(CheckoutError):
    """An operator asked for something the order's ``status`` does not allow; nothing changed."""

    def __init__(self, order_id: str, status: str) -> None:
        super().__init__(order_id, status)
        self.order_id = order_id
        self.status = status


class NotParked(_NotInStatus):
    """An operator asked to retry a saga that is not parked: only a NEEDS_ATTENTION saga
    can be retried."""

    def __str__(self) -> str:
        return f"order {self.order_id} is {self.status}, not NEEDS_ATTENTION: there is nothing to retry"


class OrderFinished(_NotInStatus):
    """An operator asked to compensate an order whose saga is over (COMPLETED or CANCELLED)."""

    def __str__(self) -> str:
        return f"order {self.order_id} is {self.status}: its saga is over, there is nothing to compensate"


class Busy(CheckoutError):
    """The system is over capacity: the order was not placed. Nothing was written and
    nothing was enqueued; place it again after ``retry_after`` seconds (with the same
    idempotency key, so a retry never places it twice).

    ``signal`` says what was over its limit (``backlog 14.2s > target 10s``).
    """

    def __init__(self, retry_after: float, signal: str) -> None:
        super().__init__(retry_after, signal)
        self.retry_after = retry_after
        self.signal = signal

    def __str__(self) -> str:
        return f"busy: {self.signal}; try again in {self.retry_after:g}s"


class _Failure(CheckoutError):
    """A failure with a ``reason`` (what the order is cancelled with) and a detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        # args are the constructor's, so Celery can rebuild the exception from JSON
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class BusinessFailure(_Failure):
    """A fact, not a fault: declined card, no stock, no carrier. Never retried.

    ``reason`` is the order's cancellation reason (``out_of_stock``, ``card_declined``, ...).
    """


class TransientFailure(_Failure):
    """A fault that may go away: a gateway timeout, a lost connection. Retried with backoff.

    ``reason`` is what the saga is cancelled with if the retries run out.
    """


class StepFailed(CheckoutError):
    """A saga step ended without effect; raised by task adapters so the canvas stops.

    The step has already recorded its failure (and the failure event) in its service.
    """

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(step, reason)
        self.step = step
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.step} failed: {self.reason}"
