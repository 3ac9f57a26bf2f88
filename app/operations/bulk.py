"""Sending dead letters again in bulk, and retrying parked sagas in bulk: first a preview,
then the act it confirms.

A preview names every dead letter a filter selects (or every parked order asked for, with
the dead letters its retry sends again), the task each would run and whether that task
calls a system outside ours — the payment gateway or the carrier — so an operator sees
what leaves the building before it does. It carries a token, a digest of the filter and of
the exact letters and orders selected: acting takes that token and refuses
(:class:`StalePreview`, carrying the new preview) if the selection changed meanwhile, so
what runs is what was looked at. The act itself is :meth:`DeadLetterOps.redrive` and
:meth:`DeadLetterOps.retry_order`, once per letter or order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from app.domain.errors import NotParked, OrderNotFound
from app.operations.dlq import DeadLetterOps, unsendable
from app.persistence.deadletters import DEAD, DeadLetter

if TYPE_CHECKING:
    from app.operations.system import System
    from app.services.order import OrderView

PAYMENT_GATEWAY = "payment gateway"
CARRIER = "carrier"

#: The tasks that call a system outside ours when they run: each payment step and
#: compensation talks to the payment gateway, each shipping one to the carrier. A step's
#: choreography reaction runs the step, and a service's ``undo`` runs its compensations,
#: so they call out too. Every other task stays inside (inventory, the order's own).
EXTERNAL_CALLS: dict[str, str] = {
    "payment.authorize": PAYMENT_GATEWAY,
    "payment.authorize_on_placed": PAYMENT_GATEWAY,
    "payment.capture": PAYMENT_GATEWAY,
    "payment.capture_on_scheduled": PAYMENT_GATEWAY,
    "payment.void": PAYMENT_GATEWAY,
    "payment.refund": PAYMENT_GATEWAY,
    "payment.undo": PAYMENT_GATEWAY,
    "shipping.schedule": CARRIER,
    "shipping.join": CARRIER,
    "shipping.cancel": CARRIER,
    "shipping.undo": CARRIER,
}


def external_system(task: str | None) -> str | None:
    """The outside system ``task`` calls when it runs (None: it calls none, or is no task)."""
    return None if task is None else EXTERNAL_CALLS.get(task)


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters: each field given must match (the letter's id, queue, task and
    order exactly, ``reason`` as a case-insensitive part of the reason); none given selects
    every one."""

    letter_id: str | None = None
    queue: str | None = None
    task: str | None = None
    order_id: str | None = None
    reason: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.letter_id is None or letter.id == self.letter_id)
            and (self.queue is None or letter.queue == self.queue)
            and (self.task is None or letter.task == self.task)
            and (self.order_id is None or letter.order_id == self.order_id)
            and (self.reason is None or self.reason.casefold() in letter.reason.casefold())
        )


@dataclass(frozen=True)
class Resend:
    """One dead letter a confirmed act would send again."""

    letter: DeadLetter
    external: str | None  # the outside system its task calls, if any
    blocked: str | None  # why it cannot be sent (the act passes it over), if it cannot

    @classmethod
    def of(cls, letter: DeadLetter) -> Resend:
        return cls(letter, external_system(letter.task), unsendable(letter))


@dataclass(frozen=True)
class RedrivePreview:
    filter: LetterFilter
    letters: tuple[Resend, ...]
    token: str


@dataclass(frozen=True)
class Parked:
    """A parked saga, and the dead letters its retry sends again."""

    view: OrderView
    letters: tuple[Resend, ...]


@dataclass(frozen=True)
class RetryPreview:
    order_ids: tuple[str, ...] | None  # the orders asked for; None: every parked one
    orders: tuple[Parked, ...]
    not_parked: tuple[str, ...]  # of those asked for, the ones not parked (or unknown)
    token: str


@dataclass(frozen=True)
class NotSent:
    id: str  # a dead letter's or an order's
    why: str


@dataclass(frozen=True)
class Redrove:
    redriven: tuple[Resend, ...]
    not_sent: tuple[NotSent, ...]


@dataclass(frozen=True)
class Retried:
    retried: tuple[Parked, ...]
    not_retried: tuple[NotSent, ...]


Preview = TypeVar("Preview", RedrivePreview, RetryPreview)


class StalePreview(Exception, Generic[Preview]):
    """The token is not the one of the selection as it is now: nothing was done."""

    def __init__(self, preview: Preview) -> None:
        super().__init__("the selection changed since its preview (or the token is not its preview's): nothing done")
        self.preview: Preview = preview


def _token(kind: str, selection: object, letters: Iterable[Resend], orders: Iterable[str] = ()) -> str:
    digest = json.dumps(
        {"kind": kind, "selection": selection, "letters": sorted(r.letter.id for r in letters), "orders": list(orders)},
        sort_keys=True,
    )
    return hashlib.sha256(digest.encode()).hexdigest()


class BulkOps:
    def __init__(self, rt: System) -> None:
        self.rt = rt
        self.dlq = DeadLetterOps(rt)

    def find(self, selection: LetterFilter, status: str | None = DEAD) -> list[DeadLetter]:
        """The dead letters in ``status`` (None: any) ``selection`` picks, oldest first."""
        found = self.dlq.store.find(status=status, order_id=selection.order_id)
        return [d for d in found if selection.matches(d)]

    def preview_redrive(self, selection: LetterFilter) -> RedrivePreview:
        """The dead letters (still DEAD) ``selection`` picks, oldest first; nothing is sent."""
        letters = tuple(Resend.of(d) for d in self.find(selection))
        return RedrivePreview(selection, letters, _token("redrive", asdict(selection), letters))

    def redrive(self, selection: LetterFilter, token: str) -> Redrove:
        """Send again every letter of the preview whose token this is (one that cannot be
        sent, or that another operator sent meanwhile, is passed over and said so)."""
        preview = self.preview_redrive(selection)
        if preview.token != token:
            raise StalePreview(preview)
        sent: list[Resend] = []
        passed: list[NotSent] = []
        for resend in preview.letters:
            if resend.blocked is not None:
                passed.append(NotSent(resend.letter.id, resend.blocked))
                continue
            try:
                self.dlq.redrive(resend.letter.id)
            except (KeyError, ValueError) as exc:
                passed.append(NotSent(resend.letter.id, str(exc.args[0])))
            else:
                sent.append(resend)
        return Redrove(tuple(sent), tuple(passed))

    def parked(self) -> list[Parked]:
        """Every parked saga, longest parked first, with the dead letters a retry sends."""
        return [self._parked(view) for view in self.rt.order.needing_attention()]

    def preview_retry(self, order_ids: Sequence[str] | None = None) -> RetryPreview:
        """The parked sagas among ``order_ids`` (None: every parked one); nothing is done."""
        found = self.parked()
        if order_ids is not None:
            asked = set(order_ids)
            found = [p for p in found if p.view.order_id in asked]
        ids = tuple(p.view.order_id for p in found)
        missing = () if order_ids is None else tuple(sorted(set(order_ids) - set(ids)))
        selection = None if order_ids is None else sorted(set(order_ids))
        letters = [r for p in found for r in p.letters]
        return RetryPreview(
            None if order_ids is None else tuple(order_ids),
            tuple(found),
            missing,
            _token("retry", selection, letters, sorted(ids)),
        )

    def retry(self, order_ids: Sequence[str] | None, token: str) -> Retried:
        """Retry every parked saga of the preview whose token this is (one that is no longer
        parked — another operator retried it meanwhile — is passed over and said so)."""
        preview = self.preview_retry(order_ids)
        if preview.token != token:
            raise StalePreview(preview)
        done: list[Parked] = []
        passed: list[NotSent] = []
        for parked in preview.orders:
            try:
                self.dlq.retry_order(parked.view.order_id)
            except (NotParked, OrderNotFound) as exc:
                passed.append(NotSent(parked.view.order_id, str(exc)))
            else:
                done.append(parked)
        return Retried(tuple(done), tuple(passed))

    def _parked(self, view: OrderView) -> Parked:
        return Parked(view, tuple(Resend.of(d) for d in self.dlq.letters(order_id=view.order_id)))
