"""A deterministic payment gateway, driven by test tokens like a provider's test cards.

| token          | authorize                                              |
|----------------|--------------------------------------------------------|
| ``tok_ok``     | succeeds                                               |
| ``tok_declined`` | declined: ``card_declined``                          |
| ``tok_flaky``  | unreachable twice for a given key, then succeeds       |
| ``tok_down``   | always unreachable: ``payment_unavailable``            |
| anything else  | declined                                               |

Like a real gateway it keeps a ledger of its own — here a table in the database it is
given — so idempotency holds across processes and the auditor can count what the
"bank" actually did (no capture or refund twice).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, insert, select, update

from app.adapters import first_call_wins
from app.domain.errors import BusinessFailure, TransientFailure
from app.domain.ports import PaymentGateway
from app.persistence.db import utcnow

metadata = MetaData()

ledger = Table(
    "fakegateway_ledger",
    metadata,
    Column("idempotency_key", String(128), primary_key=True),
    Column("operation", String(16), nullable=False),
    Column("reference", String(64), nullable=False, index=True),
    Column("amount_cents", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # pending (unreachable so far), ok, declined
    Column("result_ref", String(64)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

FLAKY_FAILURES = 2


class FakePaymentGateway(PaymentGateway):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine, checkfirst=True)

    def authorize(self, token: str, amount_cents: int, currency: str, *, idempotency_key: str, reference: str) -> str:
        return self._call("authorize", token, amount_cents, idempotency_key, reference)

    def capture(self, auth_ref: str, amount_cents: int, *, idempotency_key: str, reference: str) -> str:
        return self._call("capture", "tok_ok", amount_cents, idempotency_key, reference)

    def void(self, auth_ref: str, *, idempotency_key: str, reference: str) -> None:
        self._call("void", "tok_ok", 0, idempotency_key, reference)

    def refund(self, capture_ref: str, amount_cents: int, *, idempotency_key: str, reference: str) -> None:
        self._call("refund", "tok_ok", amount_cents, idempotency_key, reference)

    def find(self, idempotency_key: str) -> str | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(ledger.c.result_ref).where(ledger.c.idempotency_key == idempotency_key, ledger.c.outcome == "ok")
            ).scalar()
        return None if found is None else str(found)

    def _call(self, operation: str, token: str, amount: int, key: str, reference: str) -> str:
        return first_call_wins(
            lambda: self._attempt(operation, token, amount, key, reference),
            "payment_unavailable",
            "gateway ledger contention",
        )

    def _attempt(self, operation: str, token: str, amount: int, key: str, reference: str) -> str:
        with self.engine.begin() as conn:
            row = conn.execute(select(ledger).where(ledger.c.idempotency_key == key)).first()
            if row is None:
                conn.execute(
                    insert(ledger).values(
                        idempotency_key=key,
                        operation=operation,
                        reference=reference,
                        amount_cents=amount,
                        attempts=0,
                        outcome="pending",
                        updated_at=utcnow(),
                    )
                )
                attempts, outcome, result_ref = 0, "pending", None
            else:
                attempts, outcome, result_ref = row.attempts, row.outcome, row.result_ref
            if outcome == "ok":
                return str(result_ref)
            if outcome == "declined":
                raise BusinessFailure("card_declined", f"token {token!r} was declined")
            attempts += 1
            unreachable = token == "tok_down" or (token == "tok_flaky" and attempts <= FLAKY_FAILURES)
            declined = token not in {"tok_ok", "tok_flaky", "tok_down"}
            if unreachable:
                new_outcome, new_ref = "pending", None
            elif declined:
                new_outcome, new_ref = "declined", None
            else:
                new_outcome = "ok"
                new_ref = f"{operation[:3]}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
            conn.execute(
                update(ledger)
                .where(ledger.c.idempotency_key == key)
                .values(attempts=attempts, outcome=new_outcome, result_ref=new_ref, updated_at=utcnow())
            )
        if unreachable:
            raise TransientFailure("payment_unavailable", f"gateway unreachable (attempt {attempts})")
        if declined:
            raise BusinessFailure("card_declined", f"token {token!r} was declined")
        return str(new_ref)
