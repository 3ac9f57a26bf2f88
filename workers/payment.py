"""The payment service's worker: `celery -A workers.payment worker -Q payment`."""

from app.bootstrap import worker_app

app = worker_app("payment")
