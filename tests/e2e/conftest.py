"""End-to-end tests share one lab for the session: see labkit.py."""

from labkit import lab  # noqa: F401  (the session fixture)
