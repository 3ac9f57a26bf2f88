"""The names an extension imports from ``app.db``, where they were before the package took its
layers: they live in :mod:`app.persistence.db` now. New code imports them from there (or from
:mod:`app.extensions`, the extension author's one import)."""

from app.persistence.db import (  # noqa: F401
    READ_ONLY,
    Database,
    StepRecord,
    StepStats,
    UnitOfWork,
    as_utc,
    make_engine,
    row_to_envelope,
    utcnow,
)
from app.persistence.tables import StandardTables, standard_tables  # noqa: F401
