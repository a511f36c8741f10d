"""Fixtures shared across test rooms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.daemon.agentproc import AgentFactory


@pytest.fixture
def agents() -> Iterator["AgentFactory"]:
    """Real agent processes, each with its own home and runtime dir; all stopped at the end of the test."""
    from tests.daemon.agentproc import AgentFactory

    factory = AgentFactory()
    try:
        yield factory
    finally:
        factory.close()
