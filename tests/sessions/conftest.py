"""Scenario fixtures (see harness.py)."""

from tests.sessions.harness import world as world  # noqa: F401  (pytest fixture)
