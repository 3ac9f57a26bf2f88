"""An upgrade of the code, simulated in one process: OrderPlaced v3 (a gift note), its model
and its upcaster from v2 registered for the test's duration."""

from __future__ import annotations

import pytest

from app.domain.events import REGISTRY, VERSIONS, OrderPlaced
from app.domain.upcasting import UPCASTERS


class OrderPlacedV3(OrderPlaced):
    """OrderPlaced v3, as the upgraded code has it: v2 and an optional gift note."""

    gift_note: str | None = None


OrderPlacedV3.TYPE, OrderPlacedV3.TOPIC, OrderPlacedV3.VERSION = "OrderPlaced", OrderPlaced.TOPIC, 3


def read_v3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upgrade this process to read OrderPlaced v3 (undone with ``monkeypatch``)."""
    monkeypatch.setitem(REGISTRY, "OrderPlaced", OrderPlacedV3)
    monkeypatch.setitem(VERSIONS, ("OrderPlaced", 3), OrderPlacedV3)
    monkeypatch.setitem(UPCASTERS, ("OrderPlaced", 2), lambda payload: {**payload, "gift_note": None})
