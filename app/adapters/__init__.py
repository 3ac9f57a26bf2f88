"""Adapters for the ports in :mod:`app.domain.ports`: deterministic fakes a real one replaces."""
