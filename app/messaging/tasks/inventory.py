"""The inventory service's own tasks (``inventory.*``): the stock's epilogue on the order's
events, and choreography's undo. Its saga step, compensation and reaction are registered
from the definition (:mod:`.steps`)."""

from __future__ import annotations

from app.domain.events import Envelope
from app.messaging.tasks.kit import TaskKit
from app.services.inventory import InventoryService


def register(kit: TaskKit, inventory: InventoryService) -> None:
    # (handlers are looked up at call time, so a service can be swapped or patched)
    kit.define(
        "inventory.commit",
        kit.persistent(Envelope, lambda env, _id: inventory.on_order_completed(env)),
        ignore_result=True,
    )
    kit.define(
        "inventory.release_on_cancel",
        kit.persistent(Envelope, lambda env, _id: inventory.on_order_cancelled(env)),
        ignore_result=True,
    )
    kit.define(
        "inventory.undo",
        kit.persistent(Envelope, lambda env, cid: inventory.undo(env, cid), step="release_inventory"),
        ignore_result=True,
    )
