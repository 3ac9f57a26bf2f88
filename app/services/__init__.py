"""The four services. Plain classes over a :class:`app.persistence.db.Database`; no Celery here.

Each service owns its tables (named ``<service>_*``) and never reads another's.
"""
