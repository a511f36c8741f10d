"""The pure multi-device rules in agent.daemon.installations, one test per rule."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from agent.core.bundle import sign_bundle
from agent.core.errors import BadBundle
from agent.daemon.installations import (
    MAX_BUNDLE_INSTALLATIONS,
    MAX_FUTURE_NS,
    MAX_STORED_INSTALLATIONS,
    MAX_VERSION_JUMP,
    TIMESTAMP_FLOOR_NS,
    apply_bundle,
    check_bundle_shape,
    choose_session,
    destroy_due,
    incoming_supersedes,
    is_installation_id,
    new_installation_id,
    reply_allowed,
    rotation_due,
    select_enabled,
)
from agent.daemon.store import InstallationRecord, SessionRecord
from backends.memory import MemoryKey

ME = MemoryKey(b"\x01" * 32)
BOB = MemoryKey(b"\x02" * 32)


def spk(version: int) -> bytes:
    return MemoryKey(bytes([version % 150 + 0x40]) * 32).public_key()


def inst(iid: str, ts: int, *, identity: bytes = BOB.public_key(), enabled: bool = True, has_spk: bool = True,
         version: int = 1) -> InstallationRecord:
    return InstallationRecord(identity, iid, spk(version) if has_spk else None, version, 1, ts, enabled, 0)


def sess(sk: bytes, *, expired: bool = False, initiator: bool = True, confirmed: bool = False) -> SessionRecord:
    return SessionRecord(sk[:16], BOB.public_key(), "b1", b"\x02" * 33, b"\x03" * 33, initiator, confirmed,
                         expired, 0, 0, 0, sk, b"")


def test_installation_id_is_lowercase_uuid4_from_injected_rng() -> None:
    iid = new_installation_id(lambda n: b"\xab" * n)
    u = uuid.UUID(iid)
    assert u.version == 4 and iid == str(u) and iid == iid.lower()
    assert new_installation_id(lambda n: b"\xab" * n) == iid  # deterministic from the RNG
    assert is_installation_id(iid) and not is_installation_id("none") and not is_installation_id("")
    assert not is_installation_id("x" * 37) and not is_installation_id("a\nb") and not is_installation_id("é")
    assert is_installation_id("x" * 36) and is_installation_id("bob-device-1")


def test_select_enabled_newest_first_capped_and_filtered() -> None:
    rows = [
        inst("old", 1),
        inst("new", 5),
        inst("mid", 3),
        inst("newest-disabled", 9, enabled=False),
        inst("no-prekey", 8, has_spk=False),
        inst("other-identity", 7, identity=ME.public_key()),
        inst("mid2", 3),
    ]
    got = [i.installation_id for i in select_enabled(rows, BOB.public_key(), exclude=None, limit=3)]
    assert got == ["new", "mid", "mid2"]
    got = [i.installation_id for i in select_enabled(rows, BOB.public_key(), exclude="new", limit=2)]
    assert got == ["mid", "mid2"]
    assert select_enabled(rows, BOB.public_key(), exclude=None, limit=0) == []


def bundle(key: MemoryKey, entries: dict[str, tuple[int, int]], ts: int):  # type: ignore[no-untyped-def]
    return sign_bundle(key, {i: (spk(v), v, pv) for i, (v, pv) in entries.items()}, ts)


def test_apply_bundle_new_peer_devices_start_enabled_own_start_disabled() -> None:
    up = apply_bundle({}, BOB.public_key(), bundle(BOB, {"b1": (1, 1), "b2": (1, 1)}, 10),
                      our_identity=ME.public_key(), our_installation_id="me", now_ns=77)
    assert [(r.installation_id, r.enabled, r.timestamp_ns, r.first_seen_ns) for r in up.records] == [
        ("b1", True, 10, 77), ("b2", True, 10, 77)]
    own = apply_bundle({}, ME.public_key(), bundle(ME, {"me": (1, 1), "a2": (4, 1)}, 10),
                       our_identity=ME.public_key(), our_installation_id="me", now_ns=77)
    assert [(r.installation_id, r.enabled, r.spk_version) for r in own.records] == [("a2", False, 4)]


def test_apply_bundle_version_up_rekeys_down_is_ignored_timestamp_only_forward() -> None:
    cur = inst("b1", 100, version=2)
    existing = {(BOB.public_key(), "b1"): cur}
    up = apply_bundle(existing, BOB.public_key(), bundle(BOB, {"b1": (3, 1)}, 150),
                      our_identity=ME.public_key(), our_installation_id="me", now_ns=0)
    (rec,) = up.records
    assert up.rekeyed == ("b1",) and rec.spk_version == 3 and rec.spk == spk(3) and rec.timestamp_ns == 150
    with pytest.raises(BadBundle, match="older timestamp"):  # a higher version needs a timestamp not older
        apply_bundle(existing, BOB.public_key(), bundle(BOB, {"b1": (3, 1)}, 50),
                     our_identity=ME.public_key(), our_installation_id="me", now_ns=0)
    down = apply_bundle(existing, BOB.public_key(), bundle(BOB, {"b1": (1, 1)}, 200),
                        our_identity=ME.public_key(), our_installation_id="me", now_ns=0)
    (rec,) = down.records
    assert down.rekeyed == () and rec.spk == cur.spk and rec.spk_version == 2 and rec.timestamp_ns == 200
    same = apply_bundle(existing, BOB.public_key(), bundle(BOB, {"b1": (2, 1)}, 100),
                        our_identity=ME.public_key(), our_installation_id="me", now_ns=0)
    assert same.records == () and same.rekeyed == ()


def test_apply_bundle_never_lowers_protocol_version_and_keeps_enabled_flag() -> None:
    cur = replace(inst("b1", 1), protocol_version=2, enabled=False)
    up = apply_bundle({(BOB.public_key(), "b1"): cur}, BOB.public_key(), bundle(BOB, {"b1": (1, 0)}, 5),
                      our_identity=ME.public_key(), our_installation_id="me", now_ns=0)
    (rec,) = up.records
    assert rec.protocol_version == 2 and rec.enabled is False and rec.timestamp_ns == 5


def test_choose_session_smallest_shared_key_wins_others_expire() -> None:
    a, b, c = sess(b"\x05" * 32), sess(b"\x01" * 32), sess(b"\x00" * 32, expired=True)
    chosen, losers = choose_session([a, b, c])
    assert chosen is b and losers == [a]
    assert choose_session([c]) == (None, [])
    assert choose_session([]) == (None, [])


def test_incoming_session_supersedes_unless_ours_is_unconfirmed_initiator() -> None:
    assert incoming_supersedes(sess(b"\x01" * 32, initiator=True, confirmed=False)) is False
    assert incoming_supersedes(sess(b"\x01" * 32, initiator=True, confirmed=True)) is True
    assert incoming_supersedes(sess(b"\x01" * 32, initiator=False, confirmed=False)) is True


def test_rotation_destroy_and_reply_timing() -> None:
    day = 24 * 3600 * 10**9
    assert not rotation_due(0, day - 1, day) and rotation_due(0, day, day)
    assert not destroy_due(None, 10 * day, day)
    assert not destroy_due(5, 5 + day - 1, day) and destroy_due(5, 5 + day, day)
    assert reply_allowed(None, 0, 100)
    assert not reply_allowed(10, 109, 100) and reply_allowed(10, 110, 100)


REAL_NOW = 1_700_000_000 * 10**9


def test_apply_bundle_refuses_future_pre_2017_and_version_jumps() -> None:
    kw = dict(our_identity=ME.public_key(), our_installation_id="me", now_ns=REAL_NOW)
    with pytest.raises(BadBundle, match="future"):
        apply_bundle({}, BOB.public_key(), bundle(BOB, {"b1": (1, 1)}, REAL_NOW + MAX_FUTURE_NS + 1), **kw)
    with pytest.raises(BadBundle, match="2017"):
        apply_bundle({}, BOB.public_key(), bundle(BOB, {"b1": (1, 1)}, TIMESTAMP_FLOOR_NS - 1), **kw)
    cur = inst("b1", REAL_NOW - 10, version=2)
    with pytest.raises(BadBundle, match="jumps"):
        apply_bundle({(BOB.public_key(), "b1"): cur}, BOB.public_key(),
                     bundle(BOB, {"b1": (2 + MAX_VERSION_JUMP + 1, 1)}, REAL_NOW), **kw)
    ok = apply_bundle({(BOB.public_key(), "b1"): cur}, BOB.public_key(),
                      bundle(BOB, {"b1": (2 + MAX_VERSION_JUMP, 1)}, REAL_NOW), **kw)
    assert ok.rekeyed == ("b1",)


def test_bundle_shape_caps_entries_and_id_length() -> None:
    with pytest.raises(BadBundle, match="installations"):
        check_bundle_shape(bundle(BOB, {f"b{i}": (1, 1) for i in range(MAX_BUNDLE_INSTALLATIONS + 1)}, 10))
    with pytest.raises(BadBundle, match="printable"):
        check_bundle_shape(bundle(BOB, {"x" * 37: (1, 1)}, 10))
    check_bundle_shape(bundle(BOB, {f"b{i}": (1, 1) for i in range(MAX_BUNDLE_INSTALLATIONS)}, 10))


def test_per_identity_cap_records_no_new_installation_past_it() -> None:
    kw = dict(our_identity=ME.public_key(), our_installation_id="me", now_ns=REAL_NOW)
    existing = {(BOB.public_key(), f"b{i:02}"): inst(f"b{i:02}", REAL_NOW - 100 + i)
                for i in range(MAX_STORED_INSTALLATIONS - 1)}
    up = apply_bundle(existing, BOB.public_key(), bundle(BOB, {"new": (1, 1)}, REAL_NOW), **kw)
    assert [r.installation_id for r in up.records] == ["new"]  # the last free place
    existing[(BOB.public_key(), "new")] = up.records[0]
    full = apply_bundle(existing, BOB.public_key(), bundle(BOB, {"b00": (1, 1), "newer": (1, 1)}, REAL_NOW), **kw)
    assert [r.installation_id for r in full.records] == ["b00"]  # a known one is still updated, no new one
