"""Sessions over real backends: a SoftHSM2 token (IK and SPKs non-extractable in the token) and the software
key file, talking to each other.

What only a real token shows: the responder's first ratchet step runs its DH with the token-held SPK (the
ratchet holds no private key for it), SPK rotation generates a new token key, and destruction after the grace
period removes it from the token; the store's data key is unwrapped through a token DH, so the state does
not open without the token's identity.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon.sessions import DecryptResult, NoSession, SessionManager
from agent.daemon.store import Store, StoreKeyMismatch
from backends.base import Backend
from backends.home import load_config, open_backend, provision_identity
from tests.helpers.softhsm import SoftHSMToken
from tests.sessions.harness import DAY, Clock


@pytest.fixture
def token_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, Backend]]:
    home = tempfile.mkdtemp(prefix="tok-", dir=str(tmp_path))
    with SoftHSMToken() as tok:
        monkeypatch.setenv("SOFTHSM2_CONF", tok.conf)
        provision_identity(home, "pkcs11", module=tok.module, token=tok.label, pin=tok.pin)
        b = open_backend(load_config(home), home=home)
        b.unlock(tok.pin)
        yield home, b
        b.close()


def software_home(tmp_path: Path) -> tuple[str, Backend]:
    home = tempfile.mkdtemp(prefix="sw-", dir=str(tmp_path))
    provision_identity(home, "software", passphrase="pw", scrypt_n=1 << 10)
    b = open_backend(load_config(home), home=home)
    b.unlock("pw")
    return home, b


def manager(home: str, backend: Backend, clock: Clock, **kw: object) -> SessionManager:
    store = Store(Path(home) / "state.db", backend.identity())
    return SessionManager(backend, store, clock=clock, rng=os.urandom, **kw)  # type: ignore[arg-type]


def test_token_and_software_agents_converse_rotate_and_destroy(
    token_home: tuple[str, Backend], tmp_path: Path
) -> None:
    clock = Clock()
    thome, tback = token_home
    shome, sback = software_home(tmp_path)
    tok = manager(thome, tback, clock, spk_grace_ns=2 * DAY)
    sw = manager(shome, sback, clock)
    assert [i.version for i in tback.list_signed_prekeys()] == [1]  # the provisioned SPK was adopted
    # the software side starts X3DH to the token's SPK: the token answers as responder (SPK DH in the token)
    first = sw.encrypt(tok.identity, b"hello token", tok.our_bundle())
    got = tok.decrypt(sw.identity, first.message)
    assert got.payload == b"hello token"
    back = tok.encrypt(sw.identity, b"hello software")
    assert sw.decrypt(tok.identity, back.message).payload == b"hello software"
    stale = tok.our_bundle()
    # 24 h later the token side rotates: a new token key, v2
    clock.advance(DAY)
    fresh = tok.our_bundle()
    assert [i.version for i in tback.list_signed_prekeys()] == [1, 2]
    sw.add_peer_bundle(fresh)
    m = sw.encrypt(tok.identity, b"rekeyed")
    assert tok.decrypt(sw.identity, m.message).payload == b"rekeyed"
    # after the grace period the expired SPK is destroyed on the token, and X3DH to it is refused
    clock.advance(2 * DAY)
    tok.maintain()
    assert [i.version for i in tback.list_signed_prekeys()] == [2, 3]  # v1 destroyed; v3 is the daily rotation
    other_home, other_back = software_home(tmp_path)
    other = manager(other_home, other_back, clock)
    late = other.encrypt(tok.identity, b"to the destroyed prekey", stale).message
    with pytest.raises(NoSession) as exc:
        tok.decrypt(other.identity, late)
    assert exc.value.reason == "unknown_prekey"
    # the conversation survives a restart of the token side (state unwrapped through the token's IK)
    tok.close()
    tok = manager(thome, tback, clock)
    res = tok.decrypt(sw.identity, sw.encrypt(tok.identity, b"after restart").message)
    assert isinstance(res, DecryptResult) and res.payload == b"after restart"
    tok.close()
    sw.close()
    # the token home's state does not open with another identity key
    with pytest.raises(StoreKeyMismatch):
        Store(Path(thome) / "state.db", sback.identity())
