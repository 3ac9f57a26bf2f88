"""The order service: the order's own writes — the catalog, placing, completing, parking —
over the saga's memory (:mod:`.saga_memory`) and the read side (:mod:`.queries`), which it
inherits so that callers keep one object (``Runtime.order``)."""

from __future__ import annotations

import uuid

from sqlalchemy import insert, select, update

from app.domain.catalog import CATALOG, SUPPORTED_CURRENCIES
from app.domain.commands import CompleteOrder, ParkOrder, PlaceOrder
from app.domain.errors import InvalidOrder, NotParked
from app.domain.events import Envelope, OrderCompleted, OrderPlaced
from app.domain.states import TERMINAL, OrderStatus, SagaState, StepOutcome
from app.domain.values import PostalAddress, PricedLine
from app.persistence.db import StepRecord, UnitOfWork, utcnow
from app.services.order.queries import OrderQueries, same_order
from app.services.order.saga_memory import SagaMemory
from app.services.order.tables import admission, catalog, order_lines, order_row, orders


class OrderService(SagaMemory, OrderQueries):
    # --- catalog --------------------------------------------------------------------

    def seed(self) -> None:
        def work(uow: UnitOfWork) -> None:
            have = set(uow.conn.execute(select(catalog.c.sku)).scalars())
            for product in CATALOG:
                if product.sku not in have:
                    uow.conn.execute(
                        insert(catalog).values(
                            sku=product.sku,
                            name=product.name,
                            price_cents=product.price_cents,
                            currency=product.currency,
                        )
                    )

        self.db.run(work)

    # --- placing --------------------------------------------------------------------

    def count_refusals(self, n: int) -> None:
        """Add ``n`` to the refusals recorded (one row, updated in place)."""

        def work(uow: UnitOfWork) -> None:
            done = uow.conn.execute(
                update(admission).where(admission.c.decision == "refused").values(count=admission.c.count + n)
            )
            if done.rowcount == 0:  # the first refusal ever (a race with another: run() again)
                uow.conn.execute(insert(admission).values(decision="refused", count=n))

        self.db.run(work)

    def place(self, request: PlaceOrder) -> tuple[str, bool]:
        """Write the order and its OrderPlaced event in one transaction.

        Returns ``(order_id, created)``; an idempotency key seen before with the same order
        returns the earlier order and writes nothing; seen with a different order, it raises
        IdempotencyKeyReused. Raises InvalidOrder (nothing written) for an unknown SKU or an
        unsupported currency.
        """
        if request.currency not in SUPPORTED_CURRENCIES:
            raise InvalidOrder(
                "currency",
                f"unsupported currency {request.currency!r}; supported: {', '.join(sorted(SUPPORTED_CURRENCIES))}",
            )

        fingerprint = request.fingerprint()

        def work(uow: UnitOfWork) -> tuple[str, bool]:
            if request.idempotency_key is not None:
                existing = uow.conn.execute(
                    select(orders.c.order_id, orders.c.request_fingerprint).where(
                        orders.c.idempotency_key == request.idempotency_key
                    )
                ).first()
                if existing is not None:
                    return same_order(existing, fingerprint), False
            skus = {line.sku for line in request.items}
            prices = {
                r.sku: r
                for r in uow.conn.execute(
                    select(catalog.c.sku, catalog.c.price_cents, catalog.c.currency).where(catalog.c.sku.in_(skus))
                )
            }
            for index, line in enumerate(request.items):
                if line.sku not in prices:
                    raise InvalidOrder(f"items[{index}].sku", f"unknown SKU {line.sku!r} (see list_catalog())")
                if prices[line.sku].currency != request.currency:
                    raise InvalidOrder("currency", f"{line.sku} is not sold in {request.currency}")
            total = sum(prices[line.sku].price_cents * line.qty for line in request.items)
            order_id = str(uuid.uuid4())
            now = utcnow()
            uow.conn.execute(
                insert(orders).values(
                    order_id=order_id,
                    customer_id=request.customer_id,
                    status=OrderStatus.PENDING,
                    total_cents=total,
                    currency=request.currency,
                    payment_token=request.payment_token,
                    ship_to=request.ship_to.model_dump(),
                    idempotency_key=request.idempotency_key,
                    request_fingerprint=fingerprint if request.idempotency_key is not None else None,
                    saga_state=SagaState.RUNNING,
                    saga_version=self.definitions.current_version,
                    steps={},
                    compensated=False,
                    # choreography: the saga starts with OrderPlaced itself
                    saga_dispatched_at=now if self.choreography else None,
                    created_at=now,
                    updated_at=now,
                    deadline_at=now + self.deadline,
                )
            )
            uow.conn.execute(
                insert(order_lines),
                [
                    {
                        "order_id": order_id,
                        "line_no": n,
                        "sku": line.sku,
                        "qty": line.qty,
                        "unit_price_cents": prices[line.sku].price_cents,
                    }
                    for n, line in enumerate(request.items, start=1)
                ],
            )
            self._emit(
                uow,
                OrderPlaced(
                    order_id=order_id,
                    customer_id=request.customer_id,
                    ship_to=PostalAddress(**request.ship_to.model_dump()),
                    lines=tuple(
                        PricedLine(sku=line.sku, qty=line.qty, unit_price_cents=prices[line.sku].price_cents)
                        for line in request.items
                    ),
                    total_cents=total,
                    currency=request.currency,
                    # choreography: payment authorizes from this event, so it needs the token
                    payment_token=request.payment_token if self.choreography else None,
                ),
            )
            return order_id, True

        return self.db.run(work)

    # --- its own saga step ----------------------------------------------------------

    def complete(self, cmd: CompleteOrder, causation_id: str | None = None) -> StepRecord:
        """The last forward step: the order is COMPLETED. Idempotent."""

        def work(uow: UnitOfWork) -> StepRecord:
            recorded = uow.step(cmd.order_id, "complete_order")
            if recorded is not None:
                return recorded
            row = order_row(uow, cmd.order_id)
            if row.status != OrderStatus.PENDING or row.saga_state == SagaState.COMPENSATING:
                return uow.record_step(cmd.order_id, "complete_order", StepRecord(StepOutcome.PREVENTED))
            now = utcnow()
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(status=OrderStatus.COMPLETED, saga_state=SagaState.DONE, updated_at=now, finished_at=now)
            )
            self._emit(uow, OrderCompleted(order_id=cmd.order_id, total_cents=row.total_cents, currency=row.currency))
            return uow.record_step(cmd.order_id, "complete_order", StepRecord(StepOutcome.DONE))

        return self.db.run(work, causation_id=causation_id)

    def complete_on_captured(self, env: Envelope) -> CompleteOrder:
        """Choreography: once the payment is captured (``env``), the order completes."""
        return CompleteOrder(order_id=env.key)

    def give_up(self, order_id: str, step: str, reason: str, causation_id: str | None = None) -> StepRecord:
        """The order's own step ran out of retries: remember why, for the cancellation."""

        def work(uow: UnitOfWork) -> StepRecord:
            recorded = uow.step(order_id, step)
            if recorded is not None:
                return recorded
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == order_id, orders.c.failure_reason.is_(None))
                .values(failure_reason=reason, updated_at=utcnow())
            )
            return uow.record_step(order_id, step, StepRecord(StepOutcome.FAILED, reason))

        return self.db.run(work, causation_id=causation_id)

    # --- an operator's saga -----------------------------------------------------------

    def park(self, cmd: ParkOrder) -> bool:
        """A compensation gave up: mark the saga NEEDS_ATTENTION with why. Never silent."""

        def work(uow: UnitOfWork) -> bool:
            row = order_row(uow, cmd.order_id)
            if row.status in TERMINAL:
                return False
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == cmd.order_id)
                .values(
                    status=OrderStatus.NEEDS_ATTENTION, attention=f"{cmd.step}: {cmd.reason}"[:255], updated_at=utcnow()
                )
            )
            return True

        return self.db.run(work)

    def resume(self, order_id: str) -> bool:
        """An operator retries a parked saga: it is PENDING again until it finishes
        (:class:`NotParked` if it is not parked, :class:`OrderNotFound` if there is no such order)."""

        def work(uow: UnitOfWork) -> bool:
            row = order_row(uow, order_id)
            if row.status != OrderStatus.NEEDS_ATTENTION:
                raise NotParked(order_id, row.status)
            uow.conn.execute(
                update(orders)
                .where(orders.c.order_id == order_id)
                .values(status=OrderStatus.PENDING, updated_at=utcnow())
            )
            return True

        return self.db.run(work)
