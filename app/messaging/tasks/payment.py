"""The payment service's own tasks (``payment.*``): choreography's undo. Its saga steps,
compensations and reactions are registered from the definition (:mod:`.steps`)."""

from __future__ import annotations

from app.domain.events import Envelope
from app.messaging.tasks.kit import TaskKit
from app.services.payment import PaymentService


def register(kit: TaskKit, payment: PaymentService) -> None:
    # refunds first, voids last: the void is what the order waits to hear
    kit.define(
        "payment.undo",
        kit.persistent(Envelope, lambda env, cid: payment.undo(env, cid), step="void_payment"),
        ignore_result=True,
    )
