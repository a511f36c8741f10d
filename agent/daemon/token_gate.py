"""A bounded, fair admission queue in front of token work (the ECDH of a Waku open, a Waku signature).

Why: ECIES carries no recipient hint, so every envelope on a shared Waku topic costs one identity-key ECDH in the
token before its MAC can fail. A token does a few hundred to a few thousand of those per second, and one client
that pipes a busy topic into ``waku_open`` could otherwise take all of it, and grow an unbounded backlog of
worker threads waiting for the token. The gate:

* admits at most ``capacity`` tickets (queued + running) in total and at most ``per_client`` for one client;
  beyond that :meth:`TokenGate.run` raises :class:`GateBusy` at once (wire code BUSY): a flood is answered
  immediately, it is never queued without bound;
* lets ``slots`` tickets run at a time (2 keeps a one-thread token worker fed while the next caller wakes up);
* picks the next ticket round-robin at every level of the caller's key, e.g. ``(uid, pid, conn)``: first across
  uids, then across the processes of that uid, then across their connections; FIFO within one connection. A
  client with one request waiting is served after at most one ticket of every other active client;
* gives up on a ticket that waited longer than ``timeout`` (:class:`GateTimeout`, wire code TIMEOUT): its
  client has been answered TIMEOUT by then, and token time must not go to answers nobody reads.

The caller runs the work in its own thread once admitted (no extra thread, no extra hand-off).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from agent.core.error_codes import CodedError, ErrorCode

__all__ = ["TokenGate", "GateBusy", "GateTimeout", "GateStats", "ClientKey", "BUSY_BACKOFF"]

T = TypeVar("T")

#: Seconds the server waits before reading the next request of a connection it just answered BUSY. The answer
#: itself is immediate; without the pause a refused flooder retries at once, and the storm of BUSY round trips
#: (each one a pass through the agent's single event loop) delays every other client's requests (measured:
#: ~1000-3500 BUSY/s from 12 connections; see tests/bench/bench_waku_agent.py).
BUSY_BACKOFF = 0.05

#: Who is asking, most general first, e.g. ``(uid, pid, conn)``. Every key given to one gate has the same length.
ClientKey = tuple[Hashable, ...]


class GateBusy(CodedError, RuntimeError):
    """The token queue is full (in total, or for this client): retry later."""

    code = ErrorCode.BUSY


class GateTimeout(CodedError, TimeoutError):
    """A ticket waited longer than the gate's timeout for the token."""

    code = ErrorCode.TIMEOUT


@dataclass(frozen=True)
class GateStats:
    """Counters since start (for status, tests and benchmarks)."""

    queued: int
    running: int
    served: int
    busy: int
    timed_out: int
    high_water: int


class _Ticket:
    __slots__ = ("key", "event", "granted")

    def __init__(self, key: ClientKey) -> None:
        self.key = key
        self.event = threading.Event()
        self.granted = False


class _Node:
    """One level of the round-robin tree: children in service order, or (at the last level) a FIFO of tickets."""

    __slots__ = ("children", "tickets")

    def __init__(self) -> None:
        self.children: OrderedDict[Hashable, _Node] = OrderedDict()
        self.tickets: deque[_Ticket] = deque()

    def empty(self) -> bool:
        return not self.children and not self.tickets

    def push(self, key: ClientKey, depth: int, ticket: _Ticket) -> None:
        if depth == len(key):
            self.tickets.append(ticket)
            return
        child = self.children.get(key[depth])
        if child is None:
            child = self.children[key[depth]] = _Node()  # a newcomer joins at the end of the round
        child.push(key, depth + 1, ticket)

    def pop(self) -> _Ticket:
        """The next ticket: the first child's next ticket, then that child goes to the end of the round."""
        if self.tickets:
            return self.tickets.popleft()
        name, child = next(iter(self.children.items()))
        ticket = child.pop()
        if child.empty():
            del self.children[name]
        else:
            self.children.move_to_end(name)
        return ticket

    def remove(self, key: ClientKey, depth: int, ticket: _Ticket) -> bool:
        """Withdraw a waiting ticket (timeout); prunes emptied nodes. False if it is not queued."""
        if depth == len(key):
            try:
                self.tickets.remove(ticket)
            except ValueError:
                return False
            return True
        child = self.children.get(key[depth])
        if child is None or not child.remove(key, depth + 1, ticket):
            return False
        if child.empty():
            del self.children[key[depth]]
        return True


class TokenGate:
    """Bounded hierarchical round-robin admission for token work; thread-safe.

    Args:
        capacity: tickets admitted at once (queued + running), all clients together.
        per_client: tickets one client may hold at once; a client is the first ``client_depth`` key elements.
        slots: tickets that run concurrently.
        timeout: seconds a ticket may wait before :class:`GateTimeout`.
        client_depth: how many leading key elements name "one client" for ``per_client`` (default: all).
    """

    def __init__(
        self,
        *,
        capacity: int,
        per_client: int,
        slots: int = 1,
        timeout: float = 30.0,
        client_depth: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or per_client < 1 or slots < 1:
            raise ValueError("capacity, per_client and slots must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.capacity = capacity
        self.per_client = min(per_client, capacity)
        self.slots = slots
        self.timeout = timeout
        self._client_depth = client_depth
        self._clock = clock
        self._mu = threading.Lock()
        self._tree = _Node()
        self._held: dict[ClientKey, int] = {}
        self._depth: int | None = None
        self._queued = 0
        self._running = 0
        self._served = 0
        self._busy = 0
        self._timed_out = 0
        self._high = 0

    # --- public -----------------------------------------------------------------------------------------------
    def run(self, key: ClientKey, fn: Callable[[], T]) -> T:
        """Run ``fn`` once the gate admits ``key``'s ticket; raise GateBusy at once if the gate is full."""
        ticket = self._enter(tuple(key))
        try:
            self._wait(ticket)
            return fn()
        finally:
            if ticket.granted:
                self._leave(ticket)

    def stats(self) -> GateStats:
        with self._mu:
            return GateStats(self._queued, self._running, self._served, self._busy, self._timed_out, self._high)

    # --- internals --------------------------------------------------------------------------------------------
    def _client(self, key: ClientKey) -> ClientKey:
        return key if self._client_depth is None else key[: self._client_depth]

    def _enter(self, key: ClientKey) -> _Ticket:
        if not key:
            raise ValueError("a gate key needs at least one element")
        with self._mu:
            if self._depth is None:
                self._depth = len(key)
            elif len(key) != self._depth:
                raise ValueError(f"gate keys must all have {self._depth} elements")
            client = self._client(key)
            held = self._held.get(client, 0)
            if self._queued + self._running >= self.capacity:
                self._busy += 1
                raise GateBusy(f"the token queue is full ({self.capacity} requests); retry later")
            if held >= self.per_client:
                self._busy += 1
                raise GateBusy(f"this client already has {held} token requests waiting; retry later")
            self._held[client] = held + 1
            ticket = _Ticket(key)
            if self._running < self.slots and self._queued == 0:
                ticket.granted = True
                self._running += 1
            else:
                self._tree.push(key, 0, ticket)
                self._queued += 1
            self._high = max(self._high, self._queued + self._running)
            return ticket

    def _wait(self, ticket: _Ticket) -> None:
        if ticket.granted:
            return
        deadline = self._clock() + self.timeout
        while True:
            remaining = deadline - self._clock()
            if remaining > 0 and ticket.event.wait(remaining):
                return
            with self._mu:
                if ticket.granted:  # granted between the wait's end and taking the lock
                    return
                if self._clock() < deadline:
                    continue
                self._tree.remove(ticket.key, 0, ticket)
                self._queued -= 1
                self._release_client(ticket.key)
                self._timed_out += 1
            raise GateTimeout(f"waited more than {self.timeout:g} s for the token")

    def _leave(self, ticket: _Ticket) -> None:
        with self._mu:
            self._running -= 1
            self._served += 1
            self._release_client(ticket.key)
            while self._running < self.slots and self._queued:
                nxt = self._tree.pop()
                self._queued -= 1
                self._running += 1
                nxt.granted = True
                nxt.event.set()

    def _release_client(self, key: ClientKey) -> None:
        client = self._client(key)
        left = self._held[client] - 1
        if left:
            self._held[client] = left
        else:
            del self._held[client]
