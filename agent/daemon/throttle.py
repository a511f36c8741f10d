"""Per-key log throttling: events an outsider decides the number of (refused connections, per uid; refused bundles
on messages from remote peers) are logged, but cannot fill the logs.

Each key (a uid, or one kind of event) may log ``burst`` lines per ``window`` seconds; what is held back is counted and reported with the
next line that is logged, so the log still says how many there were. At most ``max_keys`` keys are tracked (the
least recently seen is forgotten first), so the table itself stays small.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

__all__ = ["Throttle"]


@dataclass
class _Window:
    start: float
    logged: int = 0
    held_back: int = 0


class Throttle:
    """Decides which of a stream of events per key get a log line; thread-safe (its callers log from the event
    loop and from worker threads)."""

    def __init__(self, *, burst: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Window] = OrderedDict()
        self._mu = threading.Lock()

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(log this event?, events held back since the last logged one: report them with this line)."""
        with self._mu:
            return self._allow(key)

    def _allow(self, key: Hashable) -> tuple[bool, int]:
        now = self._clock()
        w = self._keys.get(key)
        if w is None:
            w = self._keys[key] = _Window(now)
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if now - w.start >= self.window:
            w.start, w.logged = now, 0
        if w.logged < self.burst:
            w.logged += 1
            held, w.held_back = w.held_back, 0
            return True, held
        w.held_back += 1
        return False, 0
