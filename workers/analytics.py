"""The sales analytics extension's worker: `celery -A workers.analytics worker -Q analytics`
(with CHECKOUT_EXTENSIONS=analytics in every process's environment)."""

from app.bootstrap import worker_app

app = worker_app("analytics")
