"""The inventory service's worker: `celery -A workers.inventory worker -Q inventory`."""

from app.bootstrap import worker_app

app = worker_app("inventory")
