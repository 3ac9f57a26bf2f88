"""The payment service's worker: `celery -A workers.payment worker -Q payment`."""

from app.runtime import worker_app

app = worker_app("payment")
