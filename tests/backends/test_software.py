"""Software backend: the key file's format, protection, atomicity and failure behaviour (real files, real keyring)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.errors import (
    KeyExists,
    KeyFileCorrupt,
    KeyNotFound,
    KeyringUnavailable,
    PassphraseIncorrect,
    PassphraseRequired,
)
from backends.software import SoftwareBackend

N = 1 << 10  # small scrypt cost keeps tests fast; the default is recorded in the file the same way


def _make(tmp_path: Path, pw: str = "correct horse") -> SoftwareBackend:
    return SoftwareBackend.create(str(tmp_path / "identity.key"), passphrase=pw, scrypt_n=N)


def test_file_mode_0600_and_params_recorded(tmp_path: Path) -> None:
    b = _make(tmp_path)
    st = os.stat(b.path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    doc = json.loads(Path(b.path).read_text())
    assert doc["kdf"]["name"] == "scrypt" and doc["kdf"]["n"] == N and doc["kdf"]["r"] == 8
    # no secret in the clear: the identity scalar's hex must not appear
    secret_hex = b.export_secrets()[0].hex()
    assert secret_hex not in Path(b.path).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]  # no temp file left behind


def test_reopen_locked_then_unlock(tmp_path: Path) -> None:
    b = _make(tmp_path)
    spk = b.create_signed_prekey(1)
    ik_pub = b.identity().public_key()
    b.close()
    b2 = SoftwareBackend(b.path)
    assert b2.identity().public_key() == ik_pub  # public keys readable while locked
    assert [i.version for i in b2.list_signed_prekeys()] == [1]
    assert not b2.status().unlocked
    with pytest.raises(PassphraseRequired):
        b2.identity().sign(keccak256(b"m"))
    b2.unlock("correct horse")
    d = keccak256(b"m")
    secp256k1.verify(d, b2.identity().sign(d), ik_pub)
    assert b2.signed_prekey(1).public_key() == spk.public_key()


def test_wrong_passphrase_is_clear_and_file_untouched(tmp_path: Path) -> None:
    b = _make(tmp_path)
    b.create_signed_prekey(1)
    before = Path(b.path).read_bytes()
    b2 = SoftwareBackend(b.path)
    with pytest.raises(PassphraseIncorrect):
        b2.unlock("wrong horse")
    assert not b2.status().unlocked
    assert Path(b.path).read_bytes() == before


def test_secret_source_asked_once_no_retry(tmp_path: Path) -> None:
    b = _make(tmp_path)
    calls: list[str] = []

    def source(what: str) -> str:
        calls.append(what)
        return "bad"

    b2 = SoftwareBackend(b.path, secret_source=source)
    with pytest.raises(PassphraseIncorrect):
        b2.identity().sign(b"\x01" * 32)
    assert len(calls) == 1 and b.path in calls[0]


def test_tampered_public_key_fails_authentication(tmp_path: Path) -> None:
    b = _make(tmp_path)
    doc = json.loads(Path(b.path).read_text())
    other = bytearray(bytes.fromhex(doc["identity_public_key"]))
    other[0] ^= 1  # 02 <-> 03: still a valid point, a different key
    doc["identity_public_key"] = other.hex()
    Path(b.path).write_text(json.dumps(doc))
    b2 = SoftwareBackend(b.path)
    with pytest.raises(KeyFileCorrupt):
        b2.unlock("correct horse")


@pytest.mark.parametrize("field", ["ciphertext", "nonce"])
def test_bit_flips_in_ciphertext_detected(tmp_path: Path, field: str) -> None:
    import base64

    b = _make(tmp_path)
    doc = json.loads(Path(b.path).read_text())
    raw = bytearray(base64.b64decode(doc[field]))
    for pos in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[pos] ^= 0x40
        doc[field] = base64.b64encode(bytes(flipped)).decode()
        Path(b.path).write_text(json.dumps(doc))
        with pytest.raises(KeyFileCorrupt):
            SoftwareBackend(b.path).unlock("correct horse")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("kdf"),
        lambda d: d.__setitem__("version", 2),
        lambda d: d.__setitem__("format", "x"),
        lambda d: d["kdf"].__setitem__("n", 1 << 30),
        lambda d: d["kdf"].__setitem__("n", 1000),
        lambda d: d["kdf"].__setitem__("r", "8"),
        lambda d: d["kdf"].__setitem__("extra", 1),
        lambda d: d.__setitem__("identity_public_key", "00"),
        lambda d: d.__setitem__("signed_prekeys", {"0": "02" * 33}),
        lambda d: d.__setitem__("signed_prekeys", {"x": "02" * 33}),
        lambda d: d.__setitem__("signed_prekeys", []),
        lambda d: d.pop("ciphertext"),
        lambda d: d.__setitem__("nonce", 5),
    ],
)
def test_malformed_headers_rejected(tmp_path: Path, mutate: object) -> None:
    b = _make(tmp_path)
    doc = json.loads(Path(b.path).read_text())
    mutate(doc)  # type: ignore[operator]
    Path(b.path).write_text(json.dumps(doc))
    with pytest.raises(KeyFileCorrupt):
        SoftwareBackend(b.path).unlock("correct horse")


@pytest.mark.parametrize("cut", [0, 1, 10, 100])
def test_truncated_file_rejected(tmp_path: Path, cut: int) -> None:
    b = _make(tmp_path)
    data = Path(b.path).read_bytes()
    Path(b.path).write_bytes(data[:cut])
    with pytest.raises(KeyFileCorrupt):
        SoftwareBackend(b.path)


def test_oversize_file_rejected(tmp_path: Path) -> None:
    p = tmp_path / "big.key"
    p.write_bytes(b" " * ((1 << 20) + 2))
    with pytest.raises(KeyFileCorrupt):
        SoftwareBackend(str(p))


def test_never_overwrites(tmp_path: Path) -> None:
    b = _make(tmp_path)
    with pytest.raises(KeyExists):
        SoftwareBackend.create(b.path, passphrase="x", scrypt_n=N)


def test_spk_lifecycle_persists(tmp_path: Path) -> None:
    b = _make(tmp_path)
    b.create_signed_prekey(1)
    b.create_signed_prekey(2)
    b.destroy_signed_prekey(1)
    with pytest.raises(KeyNotFound):
        b.destroy_signed_prekey(1)
    b2 = SoftwareBackend(b.path)
    b2.unlock("correct horse")
    assert [i.version for i in b2.list_signed_prekeys()] == [2]
    _, spks = b2.export_secrets()
    assert list(spks) == [2]


def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    b = _make(tmp_path)
    b.create_signed_prekey(1)
    before = Path(b.path).read_bytes()
    os.chmod(tmp_path, 0o500)  # the directory refuses the temp file
    try:
        if os.geteuid() == 0:  # root ignores the mode: make the write fail another way
            os.chmod(tmp_path, 0o700)
            (tmp_path / "identity.key").rename(tmp_path / "moved")
            os.mkdir(tmp_path / "identity.key")
            with pytest.raises(OSError):
                b.create_signed_prekey(2)
            os.rmdir(tmp_path / "identity.key")
            (tmp_path / "moved").rename(tmp_path / "identity.key")
        else:
            with pytest.raises(OSError):
                b.create_signed_prekey(2)
    finally:
        os.chmod(tmp_path, 0o700)
    assert [i.version for i in b.list_signed_prekeys()] == [1]
    assert Path(b.path).read_bytes() == before


def test_keyring_missing_is_an_error_not_plaintext(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    with pytest.raises(KeyringUnavailable):
        SoftwareBackend.create(str(tmp_path / "k.key"), use_keyring=True)
    with pytest.raises(KeyringUnavailable):
        SoftwareBackend.create(str(tmp_path / "k.key"), use_keyring=True, keyring_backend="no.such.Backend")
    assert not (tmp_path / "k.key").exists()


def test_keyring_named_backend_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    name = "keyrings.alt.file.PlaintextKeyring"
    b = SoftwareBackend.create(str(tmp_path / "k.key"), use_keyring=True, keyring_backend=name)
    pub = b.identity().public_key()
    b.close()
    b2 = SoftwareBackend(str(tmp_path / "k.key"))
    d = keccak256(b"k")
    secp256k1.verify(d, b2.identity().sign(d), pub)  # unlocked from the keyring without a prompt
    # the keyring entry gone -> clear error
    kf = tmp_path / "xdg" / "python_keyring" / "keyring_pass.cfg"
    kf.unlink()
    b3 = SoftwareBackend(str(tmp_path / "k.key"))
    with pytest.raises(KeyringUnavailable):
        b3.identity().sign(d)


def test_bad_versions_rejected(tmp_path: Path) -> None:
    b = _make(tmp_path)
    for bad in (0, -1, 1 << 32, True):
        with pytest.raises(ValueError):
            b.create_signed_prekey(bad)
    assert b.list_signed_prekeys() == []


@pytest.mark.parametrize("n,r,p", [(1 << 22, 8, 1), (1 << 21, 8, 1), (1 << 20, 16, 1), (1 << 17, 8, 16)])
def test_scrypt_memory_and_work_capped_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       n: int, r: int, p: int) -> None:
    """A crafted header asking for 128·r·N above 1 GiB (4 GiB, 2 GiB, 2 GiB) or p above 4 is refused before
    scrypt runs: the file is not trusted until the passphrase checks out, so it must not cost gigabytes first."""
    import backends.software as sw

    b = _make(tmp_path)
    doc = json.loads(Path(b.path).read_text())
    doc["kdf"].update(n=n, r=r, p=p)
    Path(b.path).write_text(json.dumps(doc))
    calls: list[object] = []
    monkeypatch.setattr(sw, "_scrypt", lambda *a: calls.append(a) or b"\0" * 32)
    with pytest.raises(KeyFileCorrupt):
        SoftwareBackend(b.path).unlock("correct horse")
    assert calls == []  # refused before any key derivation


def test_scrypt_cap_admits_1_gib_and_refuses_more_at_creation(tmp_path: Path) -> None:
    from backends.errors import BackendConfigError

    with pytest.raises(BackendConfigError):
        SoftwareBackend.create(str(tmp_path / "k"), passphrase="x", scrypt_n=1 << 21)  # 2 GiB with r=8
    doc = json.loads(Path(_make(tmp_path).path).read_text())
    doc["kdf"].update(n=1 << 20, r=8, p=1)  # exactly 1 GiB parses (the header check alone)
    from backends.software import _Header

    _Header.parse(doc)


def test_key_file_symlink_is_not_followed(tmp_path: Path) -> None:
    from agent.home_trust import UnsafeHome

    b = _make(tmp_path)
    link = tmp_path / "link.key"
    link.symlink_to(b.path)
    with pytest.raises(UnsafeHome, match="symlink"):
        SoftwareBackend(str(link))


def test_status_notices_a_deleted_key_file_within_a_second(tmp_path: Path) -> None:
    """status() looks the key file up at most once a second (it is asked for every status request): a deleted
    file shows as not present by the next second, and a restored one as present again, while unlock state is live."""
    import time

    b = _make(tmp_path)
    b.unlock("correct horse")
    assert b.status().present and b.status().unlocked
    kept = Path(b.path).read_bytes()
    os.unlink(b.path)
    deadline = time.monotonic() + 2.5
    while b.status().present:
        assert time.monotonic() < deadline, "a deleted key file still shows as present after 2 s"
        time.sleep(0.05)
    b.lock()
    assert not b.status().unlocked  # not cached: the lock shows at once
    Path(b.path).write_bytes(kept)
    deadline = time.monotonic() + 2.5
    while not b.status().present:
        assert time.monotonic() < deadline, "a restored key file still shows as missing after 2 s"
        time.sleep(0.05)
