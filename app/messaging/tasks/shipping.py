"""The shipping service's own tasks (``shipping.*``): choreography's undo. Its saga step,
compensation and reaction (the durable join, ``shipping.join``) are registered from the
definition (:mod:`.steps`)."""

from __future__ import annotations

from app.domain.events import Envelope
from app.messaging.tasks.kit import TaskKit
from app.services.shipping import ShippingService


def register(kit: TaskKit, shipping: ShippingService) -> None:
    kit.define(
        "shipping.undo",
        kit.persistent(Envelope, lambda env, cid: shipping.undo(env, cid), step="cancel_shipment"),
        ignore_result=True,
    )
