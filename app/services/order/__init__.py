"""Order: the order itself, its prices, and the saga's memory and decisions.

Split by responsibility:

* :mod:`.tables` — the service's tables (the statuses an order goes through are :mod:`app.domain.states`);
* :mod:`.service` — :class:`OrderService`, the order's own writes (placing, completing,
  parking), over the two parts it inherits:
* :mod:`.saga_memory` — what the order has recorded of its saga, and the plans it makes;
* :mod:`.queries` — views, lists, counts and durations;
* :mod:`.projection` — the pure rules by which events tell the order how its saga went;
* :mod:`.coordinator` — the orchestrator's decisions, over a dispatcher port.

Importers (the API, the operations tools, extension authors, tests) use the names below.
"""

from app.domain.states import OPEN, TERMINAL
from app.services.order.coordinator import COMPENSATED, COMPENSATING, NOT_DUE, RESUMED, Coordinator
from app.services.order.projection import (
    OWN_STEP_EVENTS,
    STEP_EVENTS,
    UNDONE_BY,
    OrderFacts,
    all_undone,
    fold,
    learn,
    step_status,
)
from app.services.order.queries import (
    OrderQueries,
    OrderView,
    SagaCounts,
    SagaDurations,
    TimelineEntry,
    order_rows,
)
from app.services.order.saga_memory import (
    CONFIRMED,
    CONTRADICTED,
    MAX_REDRIVE_BACKOFF,
    UNCONFIRMED,
    CompensationPlan,
    Redrive,
    SagaMemory,
    SagaPlan,
    redrive_backoff,
)
from app.services.order.service import OrderService
from app.services.order.tables import (
    NEEDS_ATTENTION,
    ORDER_SUMMARY,
    SERVICE,
    OrderStore,
    admission,
    catalog,
    metadata,
    order_lines,
    orders,
    tables,
    timeline,
)

__all__ = [
    "COMPENSATED",
    "COMPENSATING",
    "CONFIRMED",
    "CONTRADICTED",
    "MAX_REDRIVE_BACKOFF",
    "NEEDS_ATTENTION",
    "ORDER_SUMMARY",
    "NOT_DUE",
    "OPEN",
    "OWN_STEP_EVENTS",
    "RESUMED",
    "SERVICE",
    "STEP_EVENTS",
    "TERMINAL",
    "UNCONFIRMED",
    "UNDONE_BY",
    "CompensationPlan",
    "Coordinator",
    "OrderFacts",
    "OrderQueries",
    "OrderService",
    "OrderStore",
    "OrderView",
    "Redrive",
    "SagaCounts",
    "SagaDurations",
    "SagaMemory",
    "SagaPlan",
    "TimelineEntry",
    "admission",
    "all_undone",
    "catalog",
    "fold",
    "learn",
    "metadata",
    "order_lines",
    "order_rows",
    "orders",
    "redrive_backoff",
    "step_status",
    "tables",
    "timeline",
]
