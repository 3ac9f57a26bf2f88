"""Which database errors mean "run the transaction again", and how long to pause first.

Two kinds of fault leave nothing of a transaction behind, so running it again is safe:

* **contention** — PostgreSQL gave up on it (a serialization failure or deadlock under
  ``repeatable read`` or ``serializable``, a lock not available), or SQLite was busy;
* **a lost connection before the commit** — the connection died in the middle of the
  transaction (a reset, ``pg_terminate_backend``, a failover, a restart): the server rolls
  back a transaction whose connection is gone, and SQLAlchemy has invalidated the pool, so
  the next run gets a fresh connection. A connection lost *during* the commit is not one:
  the commit may have taken effect, so the error goes to the caller (a task retries the
  whole step, which finds its own record).
"""

from __future__ import annotations

import random

from sqlalchemy.exc import DBAPIError, OperationalError

#: How many times a transaction is run when the database gives up on it for contention,
#: and the random pause before each new run: up to CONTENTION_PAUSE × 2^attempt seconds,
#: never over CONTENTION_PAUSE_CAP (many writers on one row under ``serializable``
#: need a few spread-out tries, not four at once).
CONTENTION_ATTEMPTS = 8
CONTENTION_PAUSE = 0.005
CONTENTION_PAUSE_CAP = 0.25

#: SQLSTATEs of a transaction PostgreSQL gave up on for contention: run it again.
RETRYABLE_SQLSTATES = {
    "40001": "a serialization failure",
    "40P01": "a deadlock",
    "55P03": "a lock not available",
}


def is_contention(exc: BaseException) -> bool:
    """Whether ``exc`` is the database giving up on a transaction for contention (worth
    running again later: nothing of it was written)."""
    if not isinstance(exc, OperationalError):
        return False
    if str(getattr(exc.orig, "sqlstate", None)) in RETRYABLE_SQLSTATES:
        return True
    message = str(exc.orig).lower()
    return any(word in message for word in ("locked", "busy", "deadlock", "serializ", "could not obtain lock"))


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself was lost (SQLAlchemy invalidated it)."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def why(exc: DBAPIError) -> str:
    """What made a transaction run again, for the log."""
    if is_disconnect(exc):
        return "a lost connection"
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return RETRYABLE_SQLSTATES.get(str(sqlstate), "contention") if sqlstate else "contention"


def pause(attempt: int) -> float:
    """The random pause before running a transaction again for the ``attempt``-th time."""
    return random.uniform(0, min(CONTENTION_PAUSE_CAP, CONTENTION_PAUSE * 2**attempt))
