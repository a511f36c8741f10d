"""The written forms of a chat key and parse_peer_identity: every accepted form, and every rejection."""

from __future__ import annotations

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import secp256k1
from agent.core.errors import BadIdentity, MalformedKey, ProtocolError
from agent.core.identity import legacy_key, parse_peer_identity, parse_share_link, share_link, zq3_decode, zq3_encode
from agent.core.identity.base58 import ALPHABET, Base58Error, b58check_decode, b58check_encode, b58decode, b58encode

# the abandon…about chat key (shared vectors, identities.abandon_about_empty.chat)
UNCOMP = (
    "0x041c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa77966f0b3648e289857fe223ed0230f7383c420ec30"
    "3b620f07503e1ac66beab0837"
)
COMP = "0x031c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa7796"
ZQ3 = "zQ3shgXaXEtHSFVhHgTUiCSNAXYKeKryUVnPZZJLBMDutaWHB"
LINK = "https://status.app/u#" + ZQ3
PUB = bytes.fromhex(COMP[2:])

secrets_st = st.integers(min_value=1, max_value=secp256k1.CURVE_ORDER - 1).map(lambda d: d.to_bytes(32, "big"))


def pub_for(secret: bytes) -> bytes:
    return bytes(coincurve.PrivateKey(secret).public_key.format(compressed=True))


def off_curve_x() -> bytes:
    """Smallest x with no point on secp256k1 (x^3+7 not a square mod p), found, not hard-coded."""
    for x in range(1, 100):
        try:
            coincurve.PublicKey(b"\x02" + x.to_bytes(32, "big"))
        except ValueError:
            return x.to_bytes(32, "big")
    raise AssertionError("no off-curve x below 100")


@pytest.mark.parametrize(
    "text",
    [
        UNCOMP,
        "0x" + UNCOMP[2:].upper(),  # hex digits in either case
        COMP,
        COMP[2:],  # compressed without 0x
        ZQ3,
        LINK,
        "https://status.app/u/G10A4B0JdgwyRww90WXtnP1o=#" + ZQ3,  # with (unsigned) profile data
        "HTTPS://Status.App/u#" + ZQ3,  # scheme and host are case-insensitive
        "https://join.status.im/u/" + UNCOMP,  # legacy link forms
        "https://join.status.im/u/" + ZQ3,
        "https://join.status.im/user/" + ZQ3,
        "  " + ZQ3 + "\n",  # surrounding whitespace is stripped
        "\t" + UNCOMP + " \r\n",
    ],
)
def test_accepts_every_form(text: str) -> None:
    assert parse_peer_identity(text) == PUB


def _reject(text: object, fragment: str | None = None) -> None:
    with pytest.raises(BadIdentity) as exc:
        parse_peer_identity(text)  # type: ignore[arg-type]
    assert isinstance(exc.value, ProtocolError)
    if fragment is not None:
        assert fragment in str(exc.value)


def test_rejects_wrong_length() -> None:
    _reject(UNCOMP[:-1], "digits")
    _reject(UNCOMP + "0", "digits")
    _reject(COMP[:-2], "digits")
    _reject(COMP[2:] + "00", "digits")
    _reject(UNCOMP[2:], "only a compressed key")  # 130 hex digits without 0x: Status rejects it too
    _reject("0x", "digits")


def test_rejects_bad_prefix() -> None:
    _reject("0x05" + UNCOMP[4:], "0x04")
    _reject("0x04" + COMP[4:], "02 or 03")
    _reject("04" + COMP[4:], "02 or 03")
    _reject("0x02" + UNCOMP[4:], "0x04")
    _reject("0y" + UNCOMP[2:])
    _reject("Q3" + ZQ3[3:])  # missing multibase z
    _reject("m" + ZQ3[1:])


def test_rejects_off_curve_points() -> None:
    x = off_curve_x()
    _reject("0x02" + x.hex(), "secp256k1")
    _reject(("03" + x.hex()), "secp256k1")
    bad_y = "0x04" + UNCOMP[4:-1] + ("0" if UNCOMP[-1] != "0" else "1")  # right x, wrong y
    _reject(bad_y, "secp256k1")
    _reject(zq3_like(b"\x02" + x), "secp256k1")


def zq3_like(body33: bytes, codec: bytes = b"\xe7\x01") -> str:
    return "z" + b58encode(codec + body33)


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "+", "/"])
def test_rejects_bad_base58_characters(bad: str) -> None:
    _reject(ZQ3[:10] + bad + ZQ3[11:], "base58")


def test_rejects_wrong_multicodec_and_truncation() -> None:
    _reject(zq3_like(PUB, b"\xea\x01"), "multicodec")  # BLS12-381 G1, the 2/ACCOUNT typo
    _reject(zq3_like(PUB, b"\xe7\x00"), "multicodec")
    _reject(zq3_like(secp256k1.decompress(PUB)), "characters")  # uncompressed key inside: 67 bytes
    _reject(zq3_like(b"\x04" + PUB[1:]), "compressed")
    _reject(ZQ3[:-1], "truncated")
    _reject(ZQ3[:20], "truncated")
    _reject(ZQ3 + "1", "characters")
    _reject("z", "characters")
    _reject("z111" + ZQ3[4:], "bytes")  # right length, but leading '1's decode to zero bytes: 36 bytes


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/u#" + ZQ3,
        "https://status.app.evil.example/u#" + ZQ3,
        "https://evilstatus.app/u#" + ZQ3,
        "http://status.app/u#" + ZQ3,
        "ftp://status.app/u#" + ZQ3,
        "https://user@status.app/u#" + ZQ3,
        "https://status.app:8443/u#" + ZQ3,
        "https://status.app:99999/u#" + ZQ3,
        "https://status.app/c#" + ZQ3,  # community link, not a profile
        "https://status.app/u/#" + ZQ3,
        "https://status.app/u/bad$data#" + ZQ3,
        "https://status.app/u?x=1#" + ZQ3,
        "https://status.app/u#",
        "https://status.app/u",
        "https://status.app/u#vitalik.eth",  # ENS: not resolved
        "https://status.app/u#" + UNCOMP,  # status-go only puts zQ3 in the fragment
        "https://status.app/u#" + ZQ3[:-1],
        "https://join.status.im/u/" + UNCOMP + "#x",
        "https://join.status.im/c/" + ZQ3,
        "https://join.status.im/u/nothex",
        "https://[::1/u#" + ZQ3,
    ],
)
def test_rejects_other_links(url: str) -> None:
    _reject(url)
    with pytest.raises(BadIdentity):
        parse_share_link(url)


def test_rejects_empty_whitespace_and_types() -> None:
    _reject("", "empty")
    _reject("   \n\t", "empty")
    _reject(ZQ3[:10] + " " + ZQ3[10:], "whitespace")
    _reject(ZQ3[:10] + "\n" + ZQ3[10:], "whitespace")
    _reject(COMP[:10] + "\u00a0" + COMP[10:], "whitespace")  # no-break space inside
    _reject(ZQ3 + "\u200b", "non-ASCII")  # zero-width space is not whitespace to Python, still rejected
    _reject("\u200b" + ZQ3, "non-ASCII")
    _reject(ZQ3 + "\x00", "non-ASCII")
    _reject("0x" + "٠" * 66, "non-ASCII")  # Arabic-Indic digits are not hex digits
    _reject("hello")
    _reject(PUB, "text")
    _reject(None, "text")
    _reject(42, "text")
    _reject(ZQ3 * 50, "longer")
    with pytest.raises(BadIdentity):
        parse_share_link(b"https://status.app/u#" + ZQ3.encode())  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(secrets_st)
def test_round_trips_every_form(secret: bytes) -> None:
    pub = pub_for(secret)
    z = zq3_encode(pub)
    assert len(z) == 49 and z.startswith("zQ3sh")
    assert zq3_decode(z) == pub
    assert zq3_encode(secp256k1.decompress(pub)) == z  # either SEC1 form encodes the same
    for form in (z, legacy_key(pub), "0x" + pub.hex(), pub.hex(), share_link(pub)):
        assert parse_peer_identity(form) == pub
    assert len(legacy_key(pub)) == 132


@settings(max_examples=150, deadline=None)
@given(secrets_st, st.integers(min_value=1, max_value=48), st.sampled_from(ALPHABET))
def test_changing_a_zq3_character_never_gives_the_same_key(secret: bytes, pos: int, ch: str) -> None:
    z = zq3_encode(pub_for(secret))
    mutated = z[:pos] + ch + z[pos + 1 :]
    if mutated == z:
        return
    try:
        got = parse_peer_identity(mutated)
    except BadIdentity:
        return
    assert got != pub_for(secret)  # base58 has no checksum: another valid key is possible, never the same


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=80))
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data
    assert b58check_decode(b58check_encode(data)) == data


def test_base58_errors() -> None:
    with pytest.raises(Base58Error):
        b58decode("abc0")
    good = b58check_encode(b"hello")
    with pytest.raises(Base58Error):
        b58check_decode(good[:-1] + ("2" if good[-1] != "2" else "3"))
    with pytest.raises(Base58Error):
        b58check_decode("1")


def test_encoders_reject_bad_keys() -> None:
    with pytest.raises(MalformedKey):
        zq3_encode(b"\x02" + off_curve_x())
    with pytest.raises(MalformedKey):
        legacy_key(PUB[:-1])
    with pytest.raises(MalformedKey):
        share_link(b"")
