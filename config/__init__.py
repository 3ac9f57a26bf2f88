"""Settings and Celery configuration: the one place the environment is read."""
