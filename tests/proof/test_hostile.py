"""Hostile local clients against a real agent: it stays responsive to a well-behaved client (liveness)."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from agent.client import AgentClient, AgentUnavailable
from tests.daemon.agentproc import AgentFactory, raw_connect, read_response, send_request, status_bytes
from tests.proof.hostile import run_hostile


def test_agent_answers_a_well_behaved_client_during_loris_half_open_and_flood_attacks() -> None:
    result = run_hostile(4.0, bound=15.0)
    assert result.failures == [], result.summary()
    assert result.probes >= 3 and result.fresh_probes >= 1
    # every kind of attack really ran, and the agent cut the ones that must be cut
    for kind in ("slow-loris", "giant-claim", "half-open", "flood"):
        assert result.cut_by_agent.get(kind, 0) > 0, result.summary()
    assert result.attempts["idle-holder"] == 10
    assert result.rss_max_kib >= result.rss_start_kib > 0  # sampled; the bound itself is one of the failures
    assert result.connections_after == 1  # only the well-behaved client is left


@pytest.fixture
def agents() -> Iterator[AgentFactory]:
    factory = AgentFactory()
    try:
        yield factory
    finally:
        factory.close()


def test_slot_exhaustion_by_idle_connections_clears_with_idle_timeout(agents: AgentFactory) -> None:
    """All ``max_connections`` slots held by idle clients: newcomers are refused (BUSY), never queued forever,
    and with ``idle_timeout`` set the slots come back, so a retrying well-behaved client is served."""
    a = agents.new(config={"max_connections": 4, "idle_timeout": 3.0})
    a.start()
    held = [raw_connect(a.sock) for _ in range(4)]
    try:
        for s in held:  # answered once: each one is registered and holds a slot
            send_request(s, status_bytes())
            assert read_response(s) is not None
        refused = 0
        deadline = time.monotonic() + 15
        while True:
            try:
                with AgentClient(a.sock, timeout=15) as c:
                    assert c.status().pid == a.pid
                break
            except AgentUnavailable:
                refused += 1
                assert time.monotonic() < deadline, "the slots never came back"
                time.sleep(0.1)
        assert refused >= 1  # the attack did saturate the agent
        for s in held:  # the idle holders were the ones cut
            assert read_response(s) is None
    finally:
        for s in held:
            s.close()
