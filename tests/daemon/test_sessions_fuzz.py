"""Negative tests of SessionManager.decrypt / confirm: bit flips, truncation, junk, wrong types.

Property: any input yields either the original plaintext or a typed ProtocolError; after any error other
than NoSession (which may legitimately record the sender's verified bundle) nothing in memory or on disk
changed, and the genuine message still decrypts afterwards.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.errors import ProtocolError
from agent.daemon.sessions import DecryptResult, NoSession
from backends.memory import MemoryKey
from tests.sessions.harness import Clock, Device, World

ALICE = MemoryKey(b"\x0a" * 32)
BOB = MemoryKey(b"\x0b" * 32)


def _setup(tmp: Path) -> tuple[World, Device, Device, list[bytes]]:
    w = World(tmp, Clock())
    a, b = w.device("a", ALICE), w.device("b", BOB)
    msgs = [a.send(b, b"first", b.mgr.our_bundle()).message]  # with X3DH header
    assert isinstance(b.recv(a, msgs[0]), DecryptResult)
    a.recv(b, b.send(a, b"ack").message)
    msgs.append(a.send(b, b"second").message)  # ratchet only
    return w, a, b, msgs


def _snapshot(b: Device) -> object:
    m = b.mgr
    return (
        [(s.rec, s.ratchet.to_bytes()) for s in m._cache.sessions.values()],
        copy.deepcopy(m._cache.installations),
        m._store.last_submitted(),
    )


@pytest.fixture(scope="module")
def convo(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Device, Device, list[bytes]]:
    return _setup(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), data=st.data())
def test_bit_flips_and_truncation_are_typed_and_harmless(
    convo: tuple[World, Device, Device, list[bytes]], which: int, data: st.DataObject
) -> None:
    _, a, b, msgs = convo
    msg = msgs[which]
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(msg) - 1))
        bad = msg[:i] + bytes([msg[i] ^ (1 << data.draw(st.integers(0, 7)))]) + msg[i + 1:]
    elif kind == "truncate":
        bad = msg[: data.draw(st.integers(0, len(msg) - 1))]
    else:
        bad = msg + data.draw(st.binary(min_size=1, max_size=40))
    before = _snapshot(b)
    try:
        got = b.mgr.decrypt(ALICE.public_key(), bad)
    except NoSession:
        pass
    except ProtocolError:
        assert _snapshot(b) == before
    else:
        assert got.payload == (b"first", b"second")[which]
    assert isinstance(b.recv(a, msg), DecryptResult)  # the genuine message still decrypts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300))
def test_random_bytes_are_typed(convo: tuple[World, Device, Device, list[bytes]], junk: bytes) -> None:
    _, a, b, _ = convo
    before = _snapshot(b)
    try:
        b.mgr.decrypt(ALICE.public_key(), junk)
    except NoSession:
        return
    except ProtocolError:
        assert _snapshot(b) == before
        return
    pytest.fail("random bytes decrypted")  # pragma: no cover


@pytest.mark.parametrize("bad", [None, "text", 5, [b"x"]])
def test_wrong_types_are_typed(convo: tuple[World, Device, Device, list[bytes]], bad: object) -> None:
    _, a, b, _ = convo
    with pytest.raises(ProtocolError):
        b.mgr.decrypt(ALICE.public_key(), bad)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        b.mgr.decrypt(bad, b"")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        b.mgr.confirm([bad])  # type: ignore[list-item]
    with pytest.raises(ProtocolError):
        a.mgr.encrypt(bad, b"x")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        a.mgr.add_peer_bundle(bad)  # type: ignore[arg-type]
