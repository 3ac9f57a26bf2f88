"""The shipping service's worker: `celery -A workers.shipping worker -Q shipping`."""

from app.runtime import worker_app

app = worker_app("shipping")
