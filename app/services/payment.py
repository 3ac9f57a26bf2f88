"""Payment: authorizations, captures, voids and refunds, through a :class:`PaymentGateway`.

One row per order in ``payment_payments`` says where its money stands; the gateway is
called with an idempotency key per (order, operation), so no retry or redelivery can
charge twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert, select, update

from app.domain.commands import AuthorizePayment, CapturePayment, RefundPayment, VoidPayment
from app.domain.errors import BusinessFailure
from app.domain.events import (
    Envelope,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentFailed,
    PaymentRefunded,
    PaymentVoided,
)
from app.domain.ports import PaymentGateway
from app.persistence.db import Database, StepRecord, UnitOfWork, utcnow
from app.persistence.tables import standard_tables
from app.services.steps import compensation, forward_step_with_call, give_up, placed

log = logging.getLogger("checkout.payment")

SERVICE = "payment"
metadata = MetaData()
tables = standard_tables(SERVICE, metadata)

payments = Table(
    "payment_payments",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # AUTHORIZED, CAPTURED, VOIDED, REFUNDED
    Column("currency", String(3), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("auth_ref", String(64), nullable=False),
    Column("capture_ref", String(64)),
    Column("captured_cents", Integer, nullable=False, default=0),
    Column("voided_cents", Integer, nullable=False, default=0),
    Column("refunded_cents", Integer, nullable=False, default=0),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Held:
    ref: str
    amount_cents: int


class PaymentService:
    def __init__(self, db: Database, gateway: PaymentGateway) -> None:
        self.db = db
        self.gateway = gateway

    # --- forward steps --------------------------------------------------------------

    def authorize(self, cmd: AuthorizePayment, causation_id: str | None = None) -> StepRecord:
        """Hold the order's total on the card. Idempotent by (order, authorize_payment)."""
        oid = cmd.order_id

        def on_success(uow: UnitOfWork, auth_ref: str) -> dict[str, object]:
            uow.conn.execute(
                insert(payments).values(
                    order_id=oid,
                    status="AUTHORIZED",
                    currency=cmd.currency,
                    amount_cents=cmd.amount_cents,
                    auth_ref=auth_ref,
                    captured_cents=0,
                    voided_cents=0,
                    refunded_cents=0,
                    updated_at=utcnow(),
                )
            )
            uow.emit(PaymentAuthorized(order_id=oid, amount_cents=cmd.amount_cents, currency=cmd.currency))
            return {"auth_ref": auth_ref}

        def on_failure(uow: UnitOfWork, failure: BusinessFailure) -> None:
            uow.emit(PaymentDeclined(order_id=oid, reason=failure.reason))

        return forward_step_with_call(
            self.db,
            oid,
            "authorize_payment",
            call=lambda: self.gateway.authorize(
                cmd.payment_token,
                cmd.amount_cents,
                cmd.currency,
                idempotency_key=f"{oid}:authorize",
                reference=oid,
            ),
            on_success=on_success,
            on_failure=on_failure,
            undo=lambda auth_ref: self.gateway.void(auth_ref, idempotency_key=f"{oid}:void", reference=oid),
            find=lambda: self.gateway.find(f"{oid}:authorize"),
            causation_id=causation_id,
        )

    def capture(self, cmd: CapturePayment, causation_id: str | None = None) -> StepRecord:
        """Take the authorized amount. Idempotent by (order, capture_payment)."""
        oid = cmd.order_id
        held = self.db.run(lambda uow: _held(uow, oid, "AUTHORIZED"))
        if held is None and self.db.run(lambda uow: uow.step(oid, "capture_payment")) is None:
            raise BusinessFailure("payment_unavailable", f"order {oid} has no authorized payment to capture")
        # With nothing held the step is recorded: forward_step_with_call answers with the record
        # before any call (and, if it is prevented, refunds what a crashed attempt captured).
        auth_ref, amount = (held.ref, held.amount_cents) if held is not None else ("", 0)

        def on_success(uow: UnitOfWork, capture_ref: str) -> dict[str, object]:
            uow.conn.execute(
                update(payments)
                .where(payments.c.order_id == oid)
                .values(status="CAPTURED", capture_ref=capture_ref, captured_cents=amount, updated_at=utcnow())
            )
            currency = uow.conn.execute(select(payments.c.currency).where(payments.c.order_id == oid)).scalar_one()
            uow.emit(PaymentCaptured(order_id=oid, amount_cents=amount, currency=currency))
            return {"capture_ref": capture_ref}

        def on_failure(uow: UnitOfWork, failure: BusinessFailure) -> None:
            uow.emit(PaymentFailed(order_id=oid, reason=failure.reason, step="capture_payment"))

        return forward_step_with_call(
            self.db,
            oid,
            "capture_payment",
            call=lambda: self.gateway.capture(auth_ref, amount, idempotency_key=f"{oid}:capture", reference=oid),
            on_success=on_success,
            on_failure=on_failure,
            undo=lambda capture_ref: self._refund_capture(oid, capture_ref),
            find=lambda: self.gateway.find(f"{oid}:capture"),
            causation_id=causation_id,
        )

    def _refund_capture(self, order_id: str, capture_ref: str) -> None:
        """Give back a capture that went through after the step was compensated (found
        ``prevented``): the amount is the order's authorized total."""
        total = self.db.query(
            lambda c: c.execute(select(payments.c.amount_cents).where(payments.c.order_id == order_id)).scalar_one()
        )
        self.gateway.refund(capture_ref, total, idempotency_key=f"{order_id}:refund", reference=order_id)

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord:
        """A step's retries ran out: record the failure and say so with PaymentFailed."""
        return give_up(
            self.db, order_id, step, reason, PaymentFailed(order_id=order_id, reason=reason, step=step), causation_id
        )

    # --- compensations --------------------------------------------------------------

    def void(self, cmd: VoidPayment, causation_id: str | None = None, *, confirm: bool = False) -> StepRecord:
        """Release an authorization that was not captured. No-op otherwise (``confirm``: say
        so with a PaymentVoided of 0)."""
        oid = cmd.order_id

        def undo(uow: UnitOfWork, held: Held) -> None:
            uow.conn.execute(
                update(payments)
                .where(payments.c.order_id == oid)
                .values(status="VOIDED", voided_cents=held.amount_cents, updated_at=utcnow())
            )
            uow.emit(PaymentVoided(order_id=oid, amount_cents=held.amount_cents))

        return compensation(
            self.db,
            oid,
            forward="authorize_payment",
            name="void_payment",
            find=lambda uow: _held(uow, oid, "AUTHORIZED"),
            external=lambda held: self.gateway.void(held.ref, idempotency_key=f"{oid}:void", reference=oid),
            undo=undo,
            confirm=(lambda uow: uow.emit(PaymentVoided(order_id=oid, amount_cents=0))) if confirm else None,
            causation_id=causation_id,
        )

    def refund(self, cmd: RefundPayment, causation_id: str | None = None) -> StepRecord:
        """Give a captured amount back. No-op if nothing was captured."""
        oid = cmd.order_id

        def undo(uow: UnitOfWork, captured: Held) -> None:
            uow.conn.execute(
                update(payments)
                .where(payments.c.order_id == oid)
                .values(status="REFUNDED", refunded_cents=captured.amount_cents, updated_at=utcnow())
            )
            uow.emit(PaymentRefunded(order_id=oid, amount_cents=captured.amount_cents))

        return compensation(
            self.db,
            oid,
            forward="capture_payment",
            name="refund_payment",
            find=lambda uow: _captured(uow, oid),
            external=lambda captured: self.gateway.refund(
                captured.ref, captured.amount_cents, idempotency_key=f"{oid}:refund", reference=oid
            ),
            undo=undo,
            causation_id=causation_id,
        )

    # --- choreography: the same steps and compensations, on events --------------------

    def authorize_on_placed(self, env: Envelope) -> AuthorizePayment | None:
        """An order was placed: authorize its total (None: the event carries no token)."""
        evt = placed(env)
        if evt.payment_token is None:  # placed by an orchestrated system: its canvas authorizes
            log.warning("order %s: OrderPlaced carries no payment token; not authorizing", env.key)
            return None
        return AuthorizePayment(
            order_id=env.key, amount_cents=evt.total_cents, currency=evt.currency, payment_token=evt.payment_token
        )

    def capture_on_scheduled(self, env: Envelope) -> CapturePayment:
        """The shipment is booked: take the payment."""
        return CapturePayment(order_id=env.key)

    def undo(self, env: Envelope, causation_id: str | None = None) -> str:
        """A failure event or OrderCancelled: give back what was taken, newest first — refund
        a capture, then void an authorization — and say so with the void even when there was
        nothing to void (the order is cancelled once every service has said so)."""
        refund = self.refund(RefundPayment(order_id=env.key), causation_id)
        void = self.void(VoidPayment(order_id=env.key), causation_id, confirm=True)
        return f"{refund.outcome}/{void.outcome}"


def _held(uow: UnitOfWork, order_id: str, status: str) -> Held | None:
    row = uow.conn.execute(
        select(payments.c.status, payments.c.auth_ref, payments.c.amount_cents).where(payments.c.order_id == order_id)
    ).first()
    if row is None or row.status != status:
        return None
    return Held(row.auth_ref, row.amount_cents)


def _captured(uow: UnitOfWork, order_id: str) -> Held | None:
    row = uow.conn.execute(
        select(payments.c.status, payments.c.capture_ref, payments.c.captured_cents).where(
            payments.c.order_id == order_id
        )
    ).first()
    if row is None or row.status != "CAPTURED":
        return None
    return Held(row.capture_ref, row.captured_cents)


def payment_rows(db: Database) -> list[dict[str, Any]]:
    """Every payment, for the auditor."""
    return [dict(r._mapping) for r in db.query(lambda c: c.execute(select(payments)).all())]
