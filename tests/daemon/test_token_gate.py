"""Unit tests of agent/daemon/token_gate.py with a slow fake token operation (threads and events, no token).

What must hold: the bound (total and per client) answers BUSY at once, the order is round-robin at every key
level, a ticket that waits too long withdraws without running, failures free the slot, and under one flooding
client a sequential client is served after a bounded number of flood operations and never refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import pytest

from agent.daemon.token_gate import GateBusy, GateTimeout, TokenGate


class SlowToken:
    """A fake token operation: records who ran, in order; can be held until released."""

    def __init__(self, delay: float = 0.0) -> None:
        self.order: list[Hashable] = []
        self.delay = delay
        self.hold = threading.Event()
        self.hold.set()
        self.mu = threading.Lock()

    def op(self, who: Hashable) -> Callable[[], Hashable]:
        def run() -> Hashable:
            with self.mu:
                self.order.append(who)
            self.hold.wait(30)
            if self.delay:
                time.sleep(self.delay)
            return who

        return run


def _wait_until(cond: Callable[[], bool]) -> None:
    for _ in range(5000):
        if cond():
            return
        time.sleep(0.001)
    raise AssertionError("condition never became true")


def _spawn(gate: TokenGate, key: tuple[Hashable, ...], fn: Callable[[], Any], out: list[Any]) -> threading.Thread:
    def body() -> None:
        try:
            out.append(gate.run(key, fn))
        except Exception as exc:  # collected for the assertions
            out.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def _blocked_gate(capacity: int, per_client: int) -> tuple[TokenGate, SlowToken, list[Any], list[threading.Thread]]:
    """A gate whose single slot is held by client ('x',) so everything else queues."""
    gate = TokenGate(capacity=capacity, per_client=per_client, slots=1, timeout=30)
    tok = SlowToken()
    tok.hold.clear()
    out: list[Any] = []
    threads = [_spawn(gate, ("x", 0), tok.op("x"), out)]
    _wait_until(lambda: tok.order == ["x"])
    return gate, tok, out, threads


def _queue(gate: TokenGate, tok: SlowToken, out: list[Any], threads: list[threading.Thread],
           items: Sequence[tuple[tuple[Hashable, ...], str]]) -> None:
    """Enqueue in exactly this order (each ticket is queued before the next thread starts)."""
    for key, name in items:
        before = gate.stats().queued
        threads.append(_spawn(gate, key, tok.op(name), out))
        _wait_until(lambda: gate.stats().queued == before + 1)


def test_full_gate_answers_busy_at_once_and_recovers() -> None:
    gate, tok, out, threads = _blocked_gate(capacity=3, per_client=3)
    _queue(gate, tok, out, threads, [(("a", 1), "a1"), (("b", 1), "b1")])
    with pytest.raises(GateBusy):  # the caller is refused while the slot is still held: no waiting
        gate.run(("c", 1), lambda: pytest.fail("a refused ticket must not run"))
    st = gate.stats()
    assert (st.running, st.queued, st.busy, st.high_water) == (1, 2, 1, 3)
    tok.hold.set()
    for t in threads:
        t.join(10)
    assert sorted(out) == ["a1", "b1", "x"]
    assert gate.run(("c", 1), lambda: "c1") == "c1"
    st = gate.stats()
    assert (st.running, st.queued, st.served, st.busy) == (0, 0, 4, 1)


def test_per_client_cap_leaves_room_for_others() -> None:
    gate, tok, out, threads = _blocked_gate(capacity=6, per_client=2)
    _queue(gate, tok, out, threads, [(("a", 1), "a1"), (("a", 1), "a2")])
    with pytest.raises(GateBusy, match="this client"):
        gate.run(("a", 1), lambda: "a3")
    _queue(gate, tok, out, threads, [(("b", 1), "b1")])  # another client still gets in
    tok.hold.set()
    for t in threads:
        t.join(10)
    assert sorted(out) == ["a1", "a2", "b1", "x"]


def test_client_depth_counts_all_connections_of_a_process() -> None:
    gate = TokenGate(capacity=8, per_client=2, slots=1, timeout=30, client_depth=2)
    tok = SlowToken()
    tok.hold.clear()
    out: list[Any] = []
    threads = [_spawn(gate, (1000, 42, 1), tok.op("c1"), out)]
    _wait_until(lambda: tok.order == ["c1"])
    _queue(gate, tok, out, threads, [((1000, 42, 2), "c2")])
    with pytest.raises(GateBusy):  # a third connection of the same process: over the process's share
        gate.run((1000, 42, 3), lambda: "c3")
    _queue(gate, tok, out, threads, [((1000, 43, 1), "other process")])
    tok.hold.set()
    for t in threads:
        t.join(10)
    assert len(out) == 3 and not any(isinstance(o, Exception) for o in out)


def test_round_robin_across_clients_fifo_within_one() -> None:
    gate, tok, out, threads = _blocked_gate(capacity=16, per_client=8)
    _queue(gate, tok, out, threads, [(("a", 1), f"a{i}") for i in range(1, 5)] + [(("b", 1), "b1"), (("b", 1), "b2")])
    tok.hold.set()
    for t in threads:
        t.join(10)
    assert tok.order == ["x", "a1", "b1", "a2", "b2", "a3", "a4"]


def test_round_robin_is_hierarchical_uid_then_process() -> None:
    """uid 1 runs two processes, uid 2 one: the uids alternate, and uid 1's turns alternate between its processes."""
    gate, tok, out, threads = _blocked_gate(capacity=16, per_client=8)
    items = [((1, "p"), "1p-1"), ((1, "p"), "1p-2"), ((1, "q"), "1q-1"), ((1, "q"), "1q-2"),
             ((2, "r"), "2r-1"), ((2, "r"), "2r-2"), ((2, "r"), "2r-3")]
    _queue(gate, tok, out, threads, items)
    tok.hold.set()
    for t in threads:
        t.join(10)
    assert tok.order == ["x", "1p-1", "2r-1", "1q-1", "2r-2", "1p-2", "2r-3", "1q-2"]


def test_waiting_too_long_withdraws_the_ticket_unrun() -> None:
    gate = TokenGate(capacity=4, per_client=4, slots=1, timeout=0.2)
    tok = SlowToken()
    tok.hold.clear()
    out: list[Any] = []
    holder = _spawn(gate, ("x",), tok.op("x"), out)
    _wait_until(lambda: tok.order == ["x"])
    with pytest.raises(GateTimeout):
        gate.run(("late",), tok.op("late"))
    st = gate.stats()
    assert (st.queued, st.running, st.timed_out) == (0, 1, 1)
    tok.hold.set()
    holder.join(10)
    assert tok.order == ["x"]  # the withdrawn ticket never ran
    assert gate.run(("late",), lambda: 7) == 7  # and its client is not counted against its cap any more


def test_a_failing_operation_frees_its_slot() -> None:
    gate = TokenGate(capacity=1, per_client=1, slots=1)

    def boom() -> None:
        raise OSError("token unplugged")

    with pytest.raises(OSError):
        gate.run(("a",), boom)
    assert gate.run(("a",), lambda: "ok") == "ok"
    st = gate.stats()
    assert (st.queued, st.running, st.served) == (0, 0, 2)


def test_bad_configuration_and_keys() -> None:
    for kwargs in ({"capacity": 0, "per_client": 1}, {"capacity": 1, "per_client": 0},
                   {"capacity": 1, "per_client": 1, "slots": 0}, {"capacity": 1, "per_client": 1, "timeout": 0}):
        with pytest.raises(ValueError):
            TokenGate(**kwargs)  # type: ignore[arg-type]
    gate = TokenGate(capacity=2, per_client=2)
    assert gate.run((1, 2), lambda: 1) == 1
    with pytest.raises(ValueError):
        gate.run((1,), lambda: 1)  # every key of one gate has the same depth
    with pytest.raises(ValueError):
        gate.run((), lambda: 1)
    assert gate.stats().running == 0


def test_two_slots_run_together() -> None:
    gate = TokenGate(capacity=4, per_client=4, slots=2)
    both = threading.Barrier(2, timeout=10)
    out: list[Any] = []
    threads = [_spawn(gate, (k,), lambda: both.wait() is not None, out) for k in ("a", "b")]
    for t in threads:
        t.join(15)
    assert out == [True, True]  # neither would pass the barrier if the second had to wait for the first


def test_flooding_client_vs_sequential_client() -> None:
    """Eight flood threads of one process against one sequential client: the sequential client is never refused,
    is served after at most a few flood operations each time, and the flood gets BUSY answers instead of a queue."""
    gate = TokenGate(capacity=8, per_client=4, slots=1, timeout=30, client_depth=2)
    tok = SlowToken(delay=0.002)
    stop = threading.Event()
    busy = [0]

    def flood(conn: int) -> None:
        while not stop.is_set():
            try:
                gate.run((1000, 1, conn), tok.op("F"))
            except GateBusy:
                busy[0] += 1
                time.sleep(0.0005)

    flooders = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(8)]
    for t in flooders:
        t.start()
    _wait_until(lambda: gate.stats().queued >= 3)
    normal_done = []
    for i in range(40):
        normal_done.append(gate.run((1000, 2, 99), tok.op("N")))  # raises if ever refused
    stop.set()
    for t in flooders:
        t.join(10)
    assert normal_done == ["N"] * 40
    order = tok.order
    starts = [i for i, who in enumerate(order) if who == "N"]
    gaps = [b - a - 1 for a, b in zip(starts, starts[1:])]
    assert max(gaps) <= 3, gaps  # typically 2: the flood op granted when N left, then one round-robin turn
    assert busy[0] > 0 and gate.stats().high_water <= 8
