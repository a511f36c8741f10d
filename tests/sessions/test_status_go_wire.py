"""The session manager's wire output is byte-identical to status-go's (status-go-facts §8.2).

Alice and Bob run as full SessionManagers with the vectors' deterministic keys (IK, SPK, EK, ratchet keys
fed through the injected RNG), installation ids and bundle timestamps; the ProtocolMessages A1, B1 and A3
they produce must equal the bytes the real status-go code produced, and each side decrypts the other's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from agent.core.keyops import KeyOps
from agent.daemon.sessions import DecryptResult, SessionManager
from agent.daemon.store import PutMeta, Store
from backends.memory import MemoryKey
from tests.sessions.harness import MemoryBackend

A1 = bytes.fromhex(
    "120e616c6963652d6465766963652d311aab010a21022ed557f5ad336b31a49857e4e9664954ac33385aa20a93e2d64bfe7f08f5"
    "127712390a0e616c6963652d6465766963652d3112270a2102eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1"
    "f283686619100118012241f008982d78a848121ff2079e84bdadc8868ab4d1829d70edde7968e529ffc34f49901394293ac23799"
    "714b85cc0fc1115e22020f39462be13c6259ee1a8f585801288180a8b1e39fe7cb17aa06e2010a0c626f622d6465766963652d31"
    "12d1010a460a21036930f46dd0b16d866d59d1054aa63298b357499cd1862ef16f3f55f1cafceb822221023c72addb4fdf09af94"
    "f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b112460a2102407cba6352eaeb9354dc75ca26396785b27a85cfd4d58575"
    "de440902292d662a2221023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b11a3f3c14b0418efc07"
    "c686eb14fa0d608f63b047061b6ebbf0cf9619dff634cda2ec23fc562d3de2ef03426ef665a8ffadfe9fbe1f1ba875b641dd2230"
    "937569bb"
)
B1 = bytes.fromhex(
    "120c626f622d6465766963652d311aa9010a210290999dbbf43034bffb1dd53eac1eb4c33a4ea1c4f48ba585cfde3830840f0555"
    "12370a0c626f622d6465766963652d3112270a21023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1"
    "b1100118012241b4d0811e364f2249b98aaf5c33368de1f517b2578d49a484e79d08a5b11e637e739bead02c2ccc4041df98644a"
    "00ce0c2b8bc7a6eb52257508e761cb63f918d500288080a8b1e39fe7cb17aa0698010a0e616c6963652d6465766963652d311285"
    "0112460a2102b21db47a75ceee5c010f69f66d48d5a017e4e2f46b47b496ddf03498c26e1cec2221023c72addb4fdf09af94f0c9"
    "4d7fe92a386a7e70cf8a1d85916386bb2535c7b1b11a3bf1d7f5c318fc081d1b1e150d38781b4c3041e59d0e3c7c81e81bc95865"
    "8176d624cd354025d22a75b646179c9c69fa3d651d511422c764707f4ea3"
)
A3 = bytes.fromhex(
    "120e616c6963652d6465766963652d311aab010a21022ed557f5ad336b31a49857e4e9664954ac33385aa20a93e2d64bfe7f08f5"
    "127712390a0e616c6963652d6465766963652d3112270a2102eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1"
    "f283686619100118012241f008982d78a848121ff2079e84bdadc8868ab4d1829d70edde7968e529ffc34f49901394293ac23799"
    "714b85cc0fc1115e22020f39462be13c6259ee1a8f585801288180a8b1e39fe7cb17aa069c010a0c626f622d6465766963652d31"
    "128b0112480a2103e7e9acacbdb43fc9fb71a8db1536c0f866caa78def49f666fa121a6f7954bb0118022221023c72addb4fdf09"
    "af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b11a3f3f802ad0ef1141eb494b5a96f3b096241d7955c31a7a6f439f"
    "0192c88408cd7a880a6dd0ca6d2dcc261d7c75ce0f23ec9a55769d81718ef9a165f841fa0ddd"
)
BOB_BUNDLE = bytes.fromhex(
    "0a210290999dbbf43034bffb1dd53eac1eb4c33a4ea1c4f48ba585cfde3830840f055512370a0c626f622d6465766963652d3112"
    "270a21023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b1100118012241b4d0811e364f2249b98a"
    "af5c33368de1f517b2578d49a484e79d08a5b11e637e739bead02c2ccc4041df98644a00ce0c2b8bc7a6eb52257508e761cb63f9"
    "18d500288080a8b1e39fe7cb17"
)


def key(c: str) -> MemoryKey:
    return MemoryKey(c.encode() * 32)


class FixedSpkBackend(MemoryBackend):
    """The vectors' SPK as version 1."""

    def __init__(self, identity: MemoryKey, spk: MemoryKey) -> None:
        super().__init__(identity)
        self._first = spk

    def create_signed_prekey(self, version: int) -> KeyOps:
        self.spks[version] = self._first
        return self._first


def scripted(secrets: str) -> Callable[[int], bytes]:
    """An RNG that hands out the vectors' keys (one ASCII byte x 32) in order for 32-byte requests."""
    it: Iterator[str] = iter(secrets)

    def rng(n: int) -> bytes:
        assert n == 32, "only key generation may draw randomness here"
        return next(it).encode() * 32

    return rng


def party(tmp: Path, name: str, ik: str, spk: str, iid: str, ts: int, secrets: str) -> SessionManager:
    home = tmp / name
    home.mkdir()
    store = Store(home / "state.db", key(ik))
    store.write([PutMeta("installation_id", iid.encode())])
    return SessionManager(FixedSpkBackend(key(ik), key(spk)), store, clock=lambda: ts, rng=scripted(secrets))


def test_alice_and_bob_managers_speak_status_go_byte_for_byte(tmp_path: Path) -> None:
    alice = party(tmp_path, "alice", "0", "A", "alice-device-1", 1700000000000000001, "146")
    bob = party(tmp_path, "bob", "2", "3", "bob-device-1", 1700000000000000000, "57")
    assert bob.our_bundle() == BOB_BUNDLE
    a1 = alice.encrypt(key("2").public_key(), b"alice message 0", BOB_BUNDLE)
    assert a1.message == A1 and a1.forward_secrecy and a1.installations == ["bob-device-1"]
    a2 = alice.encrypt(key("2").public_key(), b"alice message 1")
    got = bob.decrypt(key("0").public_key(), A1)
    assert got.payload == b"alice message 0" and got.installation_id == "alice-device-1"
    assert bob.decrypt(key("0").public_key(), a2.message).payload == b"alice message 1"
    b1 = bob.encrypt(key("0").public_key(), b"bob reply 0")
    assert b1.message == B1
    assert alice.decrypt(key("2").public_key(), B1).payload == b"bob reply 0"
    a3 = alice.encrypt(key("2").public_key(), b"alice message 2")
    assert a3.message == A3  # the X3DH header is gone: Bob replied on the session
    res = bob.decrypt(key("0").public_key(), A3)
    assert isinstance(res, DecryptResult) and res.payload == b"alice message 2"
