"""Wire format: byte-exact round trips of status-go's messages, legacy fields tolerated, typed errors only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import wire
from agent.core.errors import MalformedKey, MalformedMessage

# Full ProtocolMessages from status-go's own code (reference/status-go-facts.md §8.2).
A1 = bytes.fromhex(
    "120e616c6963652d6465766963652d311aab010a21022ed557f5ad336b31a49857e4e9664954ac33385aa20a93e2d64bfe7f08f51277"
    "12390a0e616c6963652d6465766963652d3112270a2102eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f2836866"
    "19100118012241f008982d78a848121ff2079e84bdadc8868ab4d1829d70edde7968e529ffc34f49901394293ac23799714b85cc0fc1"
    "115e22020f39462be13c6259ee1a8f585801288180a8b1e39fe7cb17aa06e2010a0c626f622d6465766963652d3112d1010a460a2103"
    "6930f46dd0b16d866d59d1054aa63298b357499cd1862ef16f3f55f1cafceb822221023c72addb4fdf09af94f0c94d7fe92a386a7e70"
    "cf8a1d85916386bb2535c7b1b112460a2102407cba6352eaeb9354dc75ca26396785b27a85cfd4d58575de440902292d662a2221023c"
    "72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b11a3f3c14b0418efc07c686eb14fa0d608f63b047061b6e"
    "bbf0cf9619dff634cda2ec23fc562d3de2ef03426ef665a8ffadfe9fbe1f1ba875b641dd2230937569bb"
)
DH_MSG = bytes.fromhex(
    "120e616c6963652d6465766963652d31aa06510a046e6f6e6512491a213ffc748e7462b90d17c2dd02a500807394f5205a3d00010203"
    "0405060708090a0baa06230a21036930f46dd0b16d866d59d1054aa63298b357499cd1862ef16f3f55f1cafceb82"
)
BOB_SPK = bytes.fromhex("023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b1")
ALICE_EK = bytes.fromhex("036930f46dd0b16d866d59d1054aa63298b357499cd1862ef16f3f55f1cafceb82")
ALICE_R1 = bytes.fromhex("02407cba6352eaeb9354dc75ca26396785b27a85cfd4d58575de440902292d662a")


def test_a1_parses_and_reencodes_byte_exact() -> None:
    msg = wire.decode_protocol_message(A1)
    assert msg.installation_id == "alice-device-1"
    entry = msg.encrypted_message["bob-device-1"]
    assert entry.X3DH_header.key == ALICE_EK and entry.X3DH_header.id == BOB_SPK
    assert entry.DR_header.key == ALICE_R1 and entry.DR_header.n == 0 and entry.DR_header.id == BOB_SPK
    assert len(msg.bundles) == 1 and msg.bundles[0].timestamp == 1700000000000000001
    assert wire.encode_protocol_message(msg) == A1


def test_dh_fallback_message_is_built_byte_exact() -> None:
    payload = bytes.fromhex("3ffc748e7462b90d17c2dd02a500807394f5205a3d000102030405060708090a0b")
    built = wire.protocol_message(
        "alice-device-1",
        {wire.NO_INSTALLATION: wire.encrypted_message(payload, dh=wire.dh_header(ALICE_EK))},
    )
    assert wire.encode(built) == DH_MSG


def test_a1_is_built_byte_exact_from_parts() -> None:
    ref = wire.decode_protocol_message(A1)
    entry = ref.encrypted_message["bob-device-1"]
    built = wire.protocol_message(
        "alice-device-1",
        {
            "bob-device-1": wire.encrypted_message(
                entry.payload,
                x3dh=wire.x3dh_header(ALICE_EK, BOB_SPK),
                dr=wire.dr_header(ALICE_R1, 0, 0, BOB_SPK),
            )
        },
        bundles=list(ref.bundles),
    )
    assert wire.encode(built) == A1


def test_a1_is_built_byte_exact_from_a_cached_head_and_entries_written_in_place() -> None:
    """What the session manager sends: the head (installation id, bundles) serialised once, then the entries
    written straight into a ProtocolMessage of their own: the same bytes as status-go's A1."""
    ref = wire.decode_protocol_message(A1)
    msg = wire.pb.ProtocolMessage()
    wire.add_entry(msg, "bob-device-1", ref.encrypted_message["bob-device-1"].payload, x3dh=(ALICE_EK, BOB_SPK),
                   dr=(ALICE_R1, 0, 0, BOB_SPK))
    assert wire.message_head("alice-device-1", list(ref.bundles)) + wire.encode(msg) == A1


_KEY = st.binary(min_size=33, max_size=33)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k != wire.NO_INSTALLATION),
                       st.tuples(st.binary(max_size=80), st.none() | st.tuples(_KEY, _KEY),
                                 st.tuples(_KEY, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), _KEY)),
                       min_size=1, max_size=4),
       st.text(max_size=20), st.integers(0, 2))
def test_head_plus_entries_is_the_whole_message(entries: dict[str, tuple[bytes, tuple[bytes, bytes] | None,
                                                                       tuple[bytes, int, int, bytes]]],
                                                iid: str, bundles: int) -> None:
    ref = wire.decode_protocol_message(A1)
    sent = list(ref.bundles) * bundles
    whole = wire.protocol_message(iid, {k: wire.encrypted_message(p, x3dh=wire.x3dh_header(*x) if x else None,
                                                                  dr=wire.dr_header(*d))
                                        for k, (p, x, d) in entries.items()}, bundles=sent)
    msg = wire.pb.ProtocolMessage()
    for k, (p, x, d) in entries.items():
        wire.add_entry(msg, k, p, x3dh=x, dr=d)
    assert wire.message_head(iid, sent) + wire.encode(msg) == wire.encode(whole)


def test_legacy_fields_1_and_103_are_ignored() -> None:
    legacy_bundle = b"\x0a\x05" + b"\x0a\x03abc"  # field 1, an old embedded Bundle
    legacy_version = b"\xb8\x06\x01"  # field 103 varint = 1
    msg = wire.decode_protocol_message(legacy_bundle + A1 + legacy_version)
    assert msg.installation_id == "alice-device-1"
    assert "bob-device-1" in msg.encrypted_message


@pytest.mark.parametrize(
    "bad",
    [
        A1[:-1],  # truncated inside a length-delimited field
        b"\xff",  # bad tag
        b"\x12\x02\xff\xfe",  # installation_id that is not UTF-8
        b"\x08" + b"\xff" * 11,  # varint too long
        b"\x1a\x05\x00",  # length beyond end
        b"\x0f",  # wire type 7 does not exist
    ],
)
def test_bad_bytes_are_malformed(bad: bytes) -> None:
    with pytest.raises(MalformedMessage):
        wire.decode_protocol_message(bad)


def test_non_bytes_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        wire.decode_protocol_message("text")  # type: ignore[arg-type]
    with pytest.raises(MalformedMessage):
        wire.decode_bundle(None)  # type: ignore[arg-type]


def test_bitflips_of_a1_never_raise_untyped() -> None:
    for i in range(len(A1)):
        for bit in (0, 3, 7):
            data = bytearray(A1)
            data[i] ^= 1 << bit
            try:
                wire.decode_protocol_message(bytes(data))
            except MalformedMessage:
                pass


_DECODERS = [
    wire.decode_protocol_message,
    wire.decode_bundle,
    wire.decode_encrypted_message,
    wire.decode_bundle_container,
]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(_DECODERS))
def test_fuzz_random_bytes_only_typed_errors(data: bytes, decode: object) -> None:
    try:
        decode(data)  # type: ignore[operator]
    except MalformedMessage:
        pass


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(A1)), st.binary(max_size=12), st.integers(0, len(A1)))
def test_fuzz_spliced_real_message_only_typed_errors(pos: int, junk: bytes, cut: int) -> None:
    data = (A1[:pos] + junk + A1[pos:])[: max(cut, 1)]
    try:
        wire.decode_protocol_message(data)
    except MalformedMessage:
        pass


def test_entry_key_checks() -> None:
    entry = wire.decode_protocol_message(A1).encrypted_message["bob-device-1"]
    wire.check_entry_keys(entry)
    for field in ("X3DH_header", "DR_header"):
        for attr in ("key", "id"):
            bad = wire.pb.EncryptedMessageProtocol()
            bad.CopyFrom(entry)
            setattr(getattr(bad, field), attr, getattr(getattr(entry, field), attr)[:32])
            with pytest.raises(MalformedKey):
                wire.check_entry_keys(bad)
    dh_entry = wire.decode_protocol_message(DH_MSG).encrypted_message["none"]
    wire.check_entry_keys(dh_entry)
    dh_entry.DH_header.key = b"\x04" + dh_entry.DH_header.key[1:]
    with pytest.raises(MalformedKey):
        wire.check_entry_keys(dh_entry)
