"""The order service's worker: `celery -A workers.order worker -Q order`."""

from app.bootstrap import worker_app

app = worker_app("order")
