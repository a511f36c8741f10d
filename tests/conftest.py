"""Fixtures shared across test rooms."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

# Key-file homes keep their rollback anchor under $XDG_STATE_HOME (agent/daemon/rollback.py): every agent this
# test run starts, in-process or as a process, keeps it in one temporary directory, never in the user's own.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="keyagent-test-state-")

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
