"""The agent asks the kernel for a short scheduling slice (agent/daemon/scheduling.py): every thread of a running
agent carries it, agent.json can turn it off, and a policy someone chose on purpose (real-time) is left alone.

Custom slices exist from Linux 6.12 on (EEVDF); older kernels ignore the request, and there the tests check only
that nothing fails and nothing else changes (the kernel version decides which, not a skip)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon.config import ConfigError, Home, load_config
from agent.daemon.scheduling import current_slice
from tests.daemon.agentproc import AgentFactory

REPO = Path(__file__).resolve().parents[2]


def _kernel_has_custom_slices() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 12)


def _py(code: str, *prefix: str) -> list[str]:
    cp = subprocess.run([*prefix, sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                        text=True, capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.split()


_PROBE = """
import os, threading
from agent.daemon.scheduling import current_slice, request_slice
before = current_slice(0)
got = request_slice({us})
seen = {{}}
t = threading.Thread(target=lambda: seen.setdefault("thread", current_slice(0)))
t.start(); t.join()
print(before, got, seen["thread"], os.sched_getscheduler(0))
"""


def test_a_requested_slice_holds_for_this_thread_and_the_threads_it_starts() -> None:
    before, got, thread, policy = _py(_PROBE.format(us=100))
    assert policy == str(os.SCHED_OTHER)
    if _kernel_has_custom_slices():
        assert (got, thread) == ("100", "100") and before != "100"
    else:  # ignored: the call still returns what the kernel reports, and the thread keeps the default
        assert thread == got


def test_a_request_below_the_kernel_minimum_is_clamped_to_it() -> None:
    _, got, _, _ = _py(_PROBE.format(us=10))
    if _kernel_has_custom_slices():
        assert got == "100"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a real-time process (CI runs as root)")
def test_a_real_time_policy_is_left_alone() -> None:
    """``chrt -f``: someone chose SCHED_FIFO for the agent on purpose; asking for a slice must not undo it."""
    _, got, thread, policy = _py(_PROBE.format(us=100), "chrt", "-f", "1")
    assert got == "None" and policy == str(os.SCHED_FIFO)


def test_batch_and_idle_policies_stay() -> None:
    """Someone ran the agent under ``chrt -b`` or ``chrt -i``: the policy stays (SCHED_BATCH takes the slice too;
    the kernel keeps its own for SCHED_IDLE)."""
    for flag, policy in (("-b", os.SCHED_BATCH), ("-i", os.SCHED_IDLE)):
        _, got, _, seen = _py(_PROBE.format(us=100), "chrt", flag, "0")
        assert seen == str(policy)
        if _kernel_has_custom_slices() and policy == os.SCHED_BATCH:
            assert got == "100"


def _thread_slices(pid: int) -> dict[str, int | None]:
    return {tid: current_slice(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_every_thread_of_a_running_agent_has_the_short_slice(agents: AgentFactory) -> None:
    agent = agents.new()
    agent.start()
    with agent.client() as c:  # a request: the commit thread and the loop's helpers exist by now
        c.encrypt(c.identity().identity_public_key, b"x", c.bundle())
    slices = _thread_slices(agent.pid)
    assert len(slices) >= 2
    if _kernel_has_custom_slices():
        assert set(slices.values()) == {100}, slices

    off = agents.new(config={"sched_slice_us": 0})
    off.start()
    if _kernel_has_custom_slices():
        assert 100 not in set(_thread_slices(off.pid).values())


@pytest.mark.parametrize("value", [1, 99, 100_001, -5, "100", 1.5, True])
def test_bad_slices_are_refused(tmp_path: Path, value: object) -> None:
    (tmp_path / "agent.json").write_text(json.dumps({"sched_slice_us": value}))
    with pytest.raises(ConfigError):
        load_config(Home.at(tmp_path))


@pytest.mark.parametrize("value", [0, 100, 2000, 100_000])
def test_good_slices_are_read(tmp_path: Path, value: int) -> None:
    (tmp_path / "agent.json").write_text(json.dumps({"sched_slice_us": value}))
    assert load_config(Home.at(tmp_path)).sched_slice_us == value
