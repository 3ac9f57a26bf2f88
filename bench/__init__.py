"""Benchmarks: the checkout saga against a raw-Celery baseline (``python -m bench.run``)."""
