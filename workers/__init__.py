"""One Celery entry point per service: ``celery -A workers.<service> worker -Q <service>``."""
