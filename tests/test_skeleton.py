"""The skeleton: the console script and the core's curve helpers behave."""

from __future__ import annotations

import subprocess
import sys

import coincurve
import pytest

from agent.core import secp256k1
from agent.core.errors import BadSignature, MalformedKey
from agent.core.hashing import keccak256
from backends.memory import MemoryKey


def test_keccak_is_legacy_not_sha3() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_console_help_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "keyagent" in out.stdout


def test_high_s_is_normalised_and_v_found() -> None:
    key = MemoryKey(b"\x30" * 32)
    digest = keccak256(b"x")
    low = key.sign(digest)
    r, s = low[:32], int.from_bytes(low[32:64], "big")
    high = r + (secp256k1.CURVE_ORDER - s).to_bytes(32, "big")
    assert not secp256k1.is_low_s(high)
    fixed = secp256k1.recoverable_from_rs(high, digest, key.public_key())
    assert fixed == low
    assert secp256k1.recover(digest, fixed) == key.public_key()


def test_recover_rejects_v27_and_bad_lengths() -> None:
    key = MemoryKey(b"\x31" * 32)
    digest = keccak256(b"y")
    sig = key.sign(digest)
    with pytest.raises(BadSignature):
        secp256k1.recover(digest, sig[:64] + bytes([27]))
    with pytest.raises(BadSignature):
        secp256k1.recover(digest, sig[:64])
    with pytest.raises(MalformedKey):
        secp256k1.public_key(b"\x02" + b"\x00" * 31)


def test_memory_dh_is_raw_x() -> None:
    a, b = MemoryKey(b"\x30" * 32), MemoryKey(b"\x32" * 32)
    assert a.dh(b.public_key()) == b.dh(a.public_key())
    assert a.dh(b.public_key()) == coincurve.PublicKey(b.public_key()).multiply(b"\x30" * 32).format(False)[1:33]
