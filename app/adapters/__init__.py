"""Adapters for the ports in :mod:`app.ports`: deterministic fakes a real one replaces."""
