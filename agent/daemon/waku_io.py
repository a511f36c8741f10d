"""The edge of the Waku payload layer: the same calls as :mod:`agent.core.waku` with OS randomness.

The core stays deterministic (tests and vectors inject their bytes); the daemon calls these, from
:mod:`agent.daemon.waku_service`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.core.keyops import KeyOps
from agent.core.waku import payload

__all__ = ["seal", "rng"]


def rng(n: int) -> bytes:
    """n bytes from the OS CSPRNG (padding, ephemeral keys, IVs, nonces)."""
    return os.urandom(n)


_DIGITS = frozenset(b"0123456789")


def _padding_first_rng() -> Callable[[int], bytes]:
    """OS randomness whose first draw (the envelope padding: the core draws it first) never ends in an ASCII digit.

    A bundle's signed material always ends in a digit (a version or the timestamp), so a signed envelope whose
    last byte before the signature is not a digit can never double as a bundle signature, whatever payload the
    client chose. Receivers never check padding, so this costs nothing on the wire.
    """
    first = True

    def draw(n: int) -> bytes:
        nonlocal first
        out = os.urandom(n)
        if first and n:
            first = False
            while out[-1] in _DIGITS:
                out = out[:-1] + os.urandom(1)
        return out

    return draw


def seal(
    data: bytes, *, to: bytes | None = None, sym_key: bytes | None = None, signer: KeyOps | None = None
) -> bytes:
    """:func:`agent.core.waku.seal` with fresh OS randomness (signed: padding that rules out bundle material)."""
    return payload.seal(data, to=to, sym_key=sym_key, signer=signer,
                        rng=_padding_first_rng() if signer is not None else rng)
