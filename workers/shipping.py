"""The shipping service's worker: `celery -A workers.shipping worker -Q shipping`."""

from app.bootstrap import worker_app

app = worker_app("shipping")
