"""One interface suite, run against every backend: software key file, SoftHSM2 and opencryptoki's soft token
directly, and both reached through p11-kit's client module while ``p11-kit server`` serves them (the set-up of a
token on another host): Debian 12's p11-kit 0.24.1 (signs, no ECDH) and 0.25.5 on both ends (ids ``p11kit_ecdh``).

Every test gets a freshly provisioned home (``provision_identity``) on a fresh token or key file.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator

import coincurve
import pytest

from agent.core import secp256k1
from agent.core.errors import MalformedKey
from agent.core.hashing import keccak256
from backends.base import Backend
from agent.core.keyops import KeyOps
from backends.errors import KeyExists, KeyNotFound, Locked, MechanismUnsupported
from backends.home import load_config, open_backend, provision_identity
from backends.memory import MemoryKey
from tests.helpers.extras import OpencryptokiToken, require_p11kit
from tests.helpers.softhsm import P11KitServer, SoftHSMToken

# p11kit_ecdh: p11-kit 0.25.5 (built by .ci/pkcs11-extras) on both ends, which carries ECDH1_DERIVE;
# opencryptoki: its 3.23 soft token as a second real token, with its own slot daemon (tests/helpers/extras.py).
KINDS = ["software", "pkcs11", "pkcs11-p11kit", "pkcs11-p11kit_ecdh", "opencryptoki", "opencryptoki-p11kit_ecdh"]


@dataclass
class Env:
    backend: Backend
    secret: str  # PIN or passphrase
    home: str
    dh_ok: bool = True  # p11-kit 0.24 client cannot carry ECDH1_DERIVE (backends/README.md)


def _open(home: str, module: str, token: str, pin: str) -> Backend:
    provision_identity(home, "pkcs11", module=module, token=token, pin=pin)
    b = open_backend(load_config(home), home=home)
    b.unlock(pin)
    return b


@pytest.fixture(params=KINDS)
def env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[Env]:
    kind = request.param
    home = tempfile.mkdtemp(prefix="home-", dir=str(tmp_path))
    if kind == "software":
        provision_identity(home, "software", passphrase="pass phrase", scrypt_n=1 << 10)
        b = open_backend(load_config(home), home=home)
        b.unlock("pass phrase")
        yield Env(b, "pass phrase", home)
        b.close()
        return
    p11kit = require_p11kit() if kind.endswith("p11kit_ecdh") else None
    with contextlib.ExitStack() as stack:
        tok: SoftHSMToken | OpencryptokiToken
        if kind.startswith("opencryptoki"):
            tok = stack.enter_context(OpencryptokiToken())
        else:
            tok = stack.enter_context(SoftHSMToken())
            monkeypatch.setenv("SOFTHSM2_CONF", tok.conf)
        if kind in ("pkcs11", "opencryptoki"):
            b = _open(home, tok.module, tok.label, tok.pin)
            yield Env(b, tok.pin, home)
            b.close()
            return
        if p11kit is None:  # Debian 12's own p11-kit
            srv = stack.enter_context(P11KitServer(tok))
            dh_ok = p11kit_has_ecdh()
        else:
            srv = stack.enter_context(P11KitServer(tok, p11kit=p11kit.bin, module=p11kit.client_module))
            dh_ok = True  # the point of these ids: X3DH's DH through the remote token
        monkeypatch.setenv("P11_KIT_SERVER_ADDRESS", srv.env["P11_KIT_SERVER_ADDRESS"])
        b = _open(home, srv.module, f"pkcs11:token={tok.label}", tok.pin)
        yield Env(b, tok.pin, home, dh_ok=dh_ok)
        b.close()


def p11kit_has_ecdh() -> bool:
    """p11-kit >= 0.25 forwards ECDH1_DERIVE; Debian 12 ships 0.24.1, which does not."""
    out = subprocess.run(["p11-kit", "--version"], capture_output=True, text=True).stdout.split()
    version = tuple(int(x) for x in out[1].split(".")[:2]) if len(out) > 1 else (0, 0)
    return version >= (0, 25)


def _dh(env: Env, key: KeyOps, peer: bytes) -> bytes | None:
    """DH through the backend, or None after checking the typed refusal where the transport lacks ECDH."""
    if env.dh_ok:
        return key.dh(peer)
    with pytest.raises(MechanismUnsupported):
        key.dh(peer)
    return None


def test_provisioned_identity_matches_config(env: Env) -> None:
    cfg = load_config(env.home)
    assert isinstance(env.backend, Backend) and isinstance(env.backend.identity(), KeyOps)
    assert isinstance(env.backend.signed_prekey(1), KeyOps)
    pub = env.backend.identity().public_key()
    assert len(pub) == 33 and pub.hex() == cfg["identity_public_key"]
    assert [i.version for i in env.backend.list_signed_prekeys()] == [1]
    assert env.backend.status().unlocked


def test_500_signatures_low_s_and_v_correct(env: Env) -> None:
    ik = env.backend.identity()
    pub = coincurve.PublicKey(ik.public_key())
    high_seen = 0
    for i in range(500):
        digest = keccak256(b"msg", i.to_bytes(4, "big"))
        sig = ik.sign(digest)
        assert len(sig) == 65 and sig[64] in (0, 1)
        assert secp256k1.is_low_s(sig)
        # V recovers exactly our key, and the plain signature verifies with coincurve (which rejects high S)
        assert coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None).format() == ik.public_key()
        der = coincurve.ecdsa.cdata_to_der(coincurve.ecdsa.deserialize_compact(sig[:64]))
        assert pub.verify(der, digest, hasher=None)
        high_seen += sig[64]
    assert 0 < high_seen < 500  # both recovery ids occur: V is computed, not constant


def test_dh_equals_software_result(env: Env) -> None:
    for backend_key in (env.backend.identity(), env.backend.signed_prekey(1)):
        for _ in range(5):
            peer = MemoryKey.generate()
            x = _dh(env, backend_key, peer.public_key())
            if x is None:
                continue
            assert x == peer.dh(backend_key.public_key())
            assert x == backend_key.dh(secp256k1.decompress(peer.public_key()))  # either point form


def test_spk_lifecycle(env: Env) -> None:
    b = env.backend
    spk2 = b.create_signed_prekey(2)
    with pytest.raises(KeyExists):
        b.create_signed_prekey(2)
    assert [i.version for i in b.list_signed_prekeys()] == [1, 2]
    assert b.signed_prekey(2).public_key() == spk2.public_key()
    digest = keccak256(b"spk")
    secp256k1.verify(digest, spk2.sign(digest), spk2.public_key())
    old = b.signed_prekey(1)
    b.destroy_signed_prekey(1)
    assert [i.version for i in b.list_signed_prekeys()] == [2]
    with pytest.raises(KeyNotFound):
        b.signed_prekey(1)
    with pytest.raises(KeyNotFound):
        b.destroy_signed_prekey(1)
    with pytest.raises(KeyNotFound):  # a handle to a destroyed key fails instead of using something else
        old.sign(digest)
    assert spk2.public_key() != old.public_key()


def test_lock_then_unlock(env: Env) -> None:
    b = env.backend
    ik = b.identity()
    digest = keccak256(b"lock")
    b.lock()
    assert not b.status().unlocked
    assert ik.public_key() == b.identity().public_key()  # public keys stay readable
    with pytest.raises(Locked):
        ik.sign(digest)
    if env.dh_ok:
        with pytest.raises(Locked):
            ik.dh(MemoryKey.generate().public_key())
    b.unlock(env.secret)
    secp256k1.verify(digest, ik.sign(digest), ik.public_key())


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64])
def test_bad_digest_rejected_before_the_key(env: Env, digest: bytes) -> None:
    with pytest.raises(ValueError):
        env.backend.identity().sign(digest)


@pytest.mark.parametrize(
    "peer",
    [b"", b"\x02" + b"\x00" * 32, b"\x04" + b"\x01" * 64, b"\x05" + b"\x11" * 32, b"\x02" * 34, b"\x04" * 66],
)
def test_bad_peer_point_is_malformed_key(env: Env, peer: bytes) -> None:
    ik = env.backend.identity()
    with pytest.raises(MalformedKey):
        ik.dh(peer)
    good = MemoryKey.generate()
    x = _dh(env, ik, good.public_key())
    assert x is None or x == good.dh(ik.public_key())  # still working afterwards


@pytest.mark.parametrize("version", [0, -1, 1 << 32, True])
def test_bad_versions(env: Env, version: int) -> None:
    with pytest.raises(ValueError):
        env.backend.create_signed_prekey(version)
    assert [i.version for i in env.backend.list_signed_prekeys()] == [1]


def test_reopen_from_config(env: Env) -> None:
    pub = env.backend.identity().public_key()
    spk = env.backend.signed_prekey(1).public_key()
    env.backend.close()
    b2 = open_backend(load_config(env.home), home=env.home, pin_source=lambda what: env.secret,
                      passphrase_source=lambda what: env.secret)
    env.backend = b2
    digest = keccak256(b"again")
    secp256k1.verify(digest, b2.identity().sign(digest), pub)
    assert b2.signed_prekey(1).public_key() == spk


def test_threads_share_one_backend(env: Env) -> None:
    """Several threads use one backend at once (in-process; the PKCS#11 backend funnels them to its worker)."""
    import threading

    ik = env.backend.identity()
    errors: list[BaseException] = []
    done = [0] * 4

    def run(t: int) -> None:
        try:
            for i in range(25):
                d = keccak256(bytes([t, i]))
                secp256k1.verify(d, ik.sign(d), ik.public_key())
                if env.dh_ok and i % 5 == 0:
                    peer = MemoryKey.generate()
                    assert ik.dh(peer.public_key()) == peer.dh(ik.public_key())
                done[t] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and done == [25] * 4


def test_release_logs_out_and_the_next_operation_logs_in_again(env: Env) -> None:
    b = env.backend
    ik = b.identity()
    digest = keccak256(b"release")
    b.release()
    # a token backend has logged out (its sessions are closed); a key file has nothing to release
    assert b.status().unlocked is (b.kind == "software")
    secp256k1.verify(digest, ik.sign(digest), ik.public_key())  # the cached PIN logs in again, no unlock needed
    assert b.status().unlocked
    b.lock()  # lock, unlike release, forgets the PIN
    with pytest.raises(Locked):
        ik.sign(digest)
