"""The store's pooled AES-GCM nonces: distinct, and never shared with a forked child."""

from __future__ import annotations

import os

from agent.daemon.store.rows import _NONCES, _NoncePool


def test_pooled_nonces_are_distinct_across_many_pool_refills() -> None:
    pool = _NoncePool()
    nonces = [pool.take(12) for _ in range(20_000)]  # ~60 refills of the 4 KiB pool
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == len(nonces)


def test_a_forked_child_never_draws_the_parents_next_nonce() -> None:
    """Without the fork hook the child would hold a copy of the pool and hand out the very bytes the parent
    hands out next: a nonce reused under the same data key."""
    _NONCES.take(12)  # the pool holds unread bytes now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: one nonce to the parent, then leave without running any test machinery
        try:
            os.write(w, _NONCES.take(12))
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 12)
    os.close(r)
    os.waitpid(pid, 0)
    parent = _NONCES.take(12)
    assert len(child) == 12 and child != parent
