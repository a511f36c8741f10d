"""Contact codes: round trip, verification on import, fingerprints, QR output, and damaged input."""

from __future__ import annotations

import pytest

from agent.core.errors import BadSignature, MalformedMessage
from agent.core.identity.formats import zq3_decode
from agent.core.wire import decode_bundle, encode
from agent.daemon.contact_card import PREFIX, decode_card, encode_card, import_card, render_qr, safety_number
from backends.memory import MemoryKey
from tests.sessions.harness import World

ALICE = MemoryKey(b"\xa1" * 32)
BOB = MemoryKey(b"\xb0" * 32)


def test_contact_code_round_trip_and_import_enables_x3dh(world: World) -> None:
    a, b = world.device("a", ALICE), world.device("b", BOB)
    code = encode_card(b.mgr.our_bundle())
    assert code.startswith(PREFIX) and code.isascii() and len(code) < 400
    contact = import_card(a.mgr, "  " + code[:50] + "\n" + code[50:] + "\n")  # wrapped lines are fine
    assert contact.identity == BOB.public_key()
    assert zq3_decode(contact.chat_key) == BOB.public_key()
    assert contact.installations == (b.iid,)
    assert a.send(b, b"hi").forward_secrecy is True  # the imported bundle is used right away


def test_safety_number_is_stable_and_identity_specific() -> None:
    s = safety_number(ALICE.public_key())
    assert s == safety_number(ALICE.public_key()) and s != safety_number(BOB.public_key())
    groups = s.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)


def test_damaged_or_forged_codes_are_rejected(world: World) -> None:
    b = world.device("b", BOB)
    raw = b.mgr.our_bundle()
    code = encode_card(raw)
    flipped = code[:-5] + ("2" if code[-5] != "2" else "3") + code[-4:]
    for bad in ("", "hello", PREFIX, code[:-1], flipped, "x" + code, PREFIX + "0OIl", code * 20):
        with pytest.raises(MalformedMessage):
            decode_card(bad)
    with pytest.raises(MalformedMessage):
        decode_card(b"bytes")  # type: ignore[arg-type]
    forged = decode_bundle(raw)
    forged.identity = ALICE.public_key()  # Bob's signature, Alice's key: checksum fine, signature not
    with pytest.raises(BadSignature):
        decode_card(encode_card(encode(forged)))
    assert [d.is_self for d in world.device("a", ALICE).mgr.devices()] == [True]


def test_qr_renders_text_svg_png(world: World) -> None:
    code = encode_card(world.device("b", BOB).mgr.our_bundle())
    text = render_qr(code, "text").decode()
    assert "█" in text and len(text.splitlines()) > 20
    assert render_qr(code, "svg").lstrip().startswith(b"<?xml")
    assert render_qr(code, "png").startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        render_qr(code, "gif")
