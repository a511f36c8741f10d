"""Connection slots: who may hold one of the agent's ``max_connections`` and how many.

An admitted non-owner uid (``allow_uids``/``allow_gids``, e.g. a custody service) is still not the owner: it must
not be able to take every slot and lock the owner out. So non-owner uids hold at most ``per_uid`` slots each, and
``owner_reserved`` slots (at most half of ``max_connections``) are only ever given to the owner (our uid or root).
The owner is bounded by ``max_connections`` alone. Idle holders are cut by ``idle_timeout`` (agent/framing.py).

Kept free of sockets and threads so the rules can be tested alone and reused by another serving model; the caller
serialises calls (the server holds its connection lock).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass

__all__ = ["SlotPolicy", "Verdict", "Slots"]


class Verdict(enum.Enum):
    ADMIT = "admit"
    FULL = "full"  # every slot this client may use is taken
    UID_FULL = "uid_full"  # this uid holds its per-uid cap


@dataclass(frozen=True)
class SlotPolicy:
    max_connections: int
    per_uid: int
    owner_reserved: int

    @property
    def reserved(self) -> int:
        """Slots only the owner gets; capped at half so a small ``max_connections`` still admits others."""
        return min(self.owner_reserved, self.max_connections // 2)


class Slots:
    """The slots held right now, per uid."""

    def __init__(self, policy: SlotPolicy) -> None:
        self.policy = policy
        self._held: Counter[int] = Counter()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def held_by(self, uid: int) -> int:
        return self._held[uid]

    def take(self, uid: int, owner: bool) -> Verdict:
        """Take a slot for a new connection from ``uid`` if the policy allows it."""
        p = self.policy
        if owner:
            if self._total >= p.max_connections:
                return Verdict.FULL
        else:
            if self._held[uid] >= p.per_uid:
                return Verdict.UID_FULL
            if self._total >= p.max_connections - p.reserved:
                return Verdict.FULL
        self._held[uid] += 1
        self._total += 1
        return Verdict.ADMIT

    def give_back(self, uid: int) -> None:
        """Release a slot taken by :meth:`take` (once per admitted connection)."""
        if self._held[uid] <= 0:
            raise ValueError(f"uid {uid} holds no slot")
        self._held[uid] -= 1
        if not self._held[uid]:
            del self._held[uid]
        self._total -= 1
