"""A deterministic carrier: delivers everywhere but Antarctica (``AQ``)."""

from __future__ import annotations

import hashlib

from app.domain.errors import BusinessFailure
from app.domain.ports import Carrier
from app.domain.values import Address, Line

UNSERVED_COUNTRIES = frozenset({"AQ"})


class FakeCarrier(Carrier):
    def schedule(self, address: Address, lines: tuple[Line, ...], *, idempotency_key: str) -> str:
        if address.country in UNSERVED_COUNTRIES:
            raise BusinessFailure("shipping_unavailable", f"no carrier delivers to {address.country}")
        return "TRK-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:12].upper()

    def cancel(self, tracking_ref: str, *, idempotency_key: str) -> None:
        return None
