"""The edge of the Waku payload layer: the same calls as :mod:`agent.core.waku` with OS randomness.

The core stays deterministic (tests and vectors inject their bytes); the daemon calls these, from
:mod:`agent.daemon.waku_service`.
"""

from __future__ import annotations

import os

from agent.core.keyops import KeyOps
from agent.core.waku import payload

__all__ = ["seal", "rng"]


def rng(n: int) -> bytes:
    """n bytes from the OS CSPRNG (padding, ephemeral keys, IVs, nonces)."""
    return os.urandom(n)


def seal(
    data: bytes, *, to: bytes | None = None, sym_key: bytes | None = None, signer: KeyOps | None = None
) -> bytes:
    """:func:`agent.core.waku.seal` with fresh OS randomness."""
    return payload.seal(data, to=to, sym_key=sym_key, signer=signer, rng=rng)
