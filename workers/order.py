"""The order service's worker: `celery -A workers.order worker -Q order`."""

from app.runtime import worker_app

app = worker_app("order")
