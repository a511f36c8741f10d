"""A sender attaches its signed bundle to every message: the same bytes that changed nothing are not applied again,
but nothing is missed — a new bundle, or any installation change in between, is applied as always."""

from __future__ import annotations

import pytest

import agent.daemon.sessions as sessions_mod
from backends.memory import MemoryKey
from tests.sessions.harness import World, world  # noqa: F401  (fixture)

ALICE = MemoryKey(b"\x0a" * 32)
BOB = MemoryKey(b"\x0b" * 32)


def test_the_same_bundle_is_applied_once_until_something_changes(world: World,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    m = b.send(a, b"hi", a.mgr.our_bundle())
    a.mgr.confirm([a.mgr.decrypt(b.identity, m.message).confirm_ref])
    calls: list[bytes] = []
    real = sessions_mod.apply_bundle

    def counting(*args: object, **kw: object) -> object:
        calls.append(args[1])  # type: ignore[arg-type]
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sessions_mod, "apply_bundle", counting)
    for k in range(4):  # the same bundle rides on each: looked at once (it changed nothing), then remembered
        a.mgr.decrypt(b.identity, b.send(a, b"m%d" % k).message)
    assert len(calls) == 1
    # any installation change in between: the next one is applied again
    rec = a.mgr._cache.devices(b.identity)[b.iid]
    a.mgr._cache.put_installation(rec)
    a.mgr.decrypt(b.identity, b.send(a, b"after a change").message)
    assert len(calls) == 2
    # a new bundle (b rotated its prekey): applied, and a's record of b follows it
    b.mgr.rotate_signed_prekey()
    a.mgr.decrypt(b.identity, b.send(a, b"new bundle").message)
    assert len(calls) == 3
    assert a.mgr._cache.devices(b.identity)[b.iid].spk_version == 2
