"""Devices, contact exchange and public messages through real agent processes, the Python client and the CLI.

Several homes share one identity (same key, separate homes = separate installations). Alice's devices learn of
each other from a bundle signed by her identity key: a contact code imported with ``keyagent contact import``
or a message that is not for them. Approval (``keyagent devices approve``) changes the bundle, and the bundle
that rides on the next message is what tells Bob to include the new device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.client import AgentClient, AgentError
from agent.core.bundle import sign_bundle, signature_digest
from agent.core.errors import ProtocolError
from agent.core.identity import visual_fields
from agent.core.identity.formats import zq3_encode
from agent.core.wire import decode_bundle, decode_protocol_message, encode
from agent.daemon.contact_card import PREFIX, decode_card, encode_card, safety_number
from backends.memory import MemoryKey
from backends.home import provision_identity
from tests.daemon.agentproc import PASSPHRASE, AgentFactory, AgentProc

ALICE_SECRET = b"\xa1" * 32
BOB_SECRET = b"\xb0" * 32
MALLORY = MemoryKey(b"\x66" * 32)


class Dev:
    """One running agent and a client connected to it."""

    def __init__(self, proc: AgentProc, client: AgentClient) -> None:
        self.proc, self.c = proc, client
        ident = client.identity()
        self.identity, self.iid = ident.identity_public_key, ident.installation_id

    def cli(self, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
        cp = self.proc.cli(*args, input=input)
        return cp.returncode, cp.stdout.decode("utf-8"), cp.stderr.decode("utf-8")

    def code(self) -> str:
        return encode_card(self.c.bundle())


def device(agents: AgentFactory, name: str, secret: bytes) -> Dev:
    home = agents.root / name
    # as `keyagent init --backend software` with an imported key: homes sharing a secret are one identity's devices
    provision_identity(str(home), "software", passphrase=PASSPHRASE, scrypt_n=1 << 12, import_secret=secret)
    proc = agents.new(home=home)
    proc.start()
    return Dev(proc, proc.client())


def bundle_ids(message: bytes) -> set[str]:
    """The installation ids in the (single) bundle riding on a ProtocolMessage."""
    msg = decode_protocol_message(message)
    assert len(msg.bundles) == 1
    return set(msg.bundles[0].signed_pre_keys.keys())


def state(dev: Dev) -> tuple[list[tuple[str, bool, bool, bool, int]], bytes]:
    """What a device request could change: the device list (not our own moving "last activity") and our bundle."""
    return [(d.installation_id, d.is_self, d.enabled, d.active, d.spk_version) for d in dev.c.devices()], \
        dev.c.bundle()


def rows(dev: Dev) -> dict[str, dict[str, object]]:
    rc, out, err = dev.cli("devices", "installations", "--json")
    assert rc == 0, err
    return {r["installation_id"]: r for r in json.loads(out)}


# --- devices ---------------------------------------------------------------------------------------------------


def test_own_device_listed_approved_propagated_and_disabled(agents: AgentFactory) -> None:
    a1, a2, b = device(agents, "a1", ALICE_SECRET), device(agents, "a2", ALICE_SECRET), device(agents, "b", BOB_SECRET)
    alice, bob = a1.identity, b.identity
    assert a2.identity == alice and a1.iid != a2.iid
    # alone at first: only ourselves, active, and our bundle names only us
    listing = a1.c.devices()
    assert [(d.installation_id, d.is_self, d.enabled, d.active) for d in listing] == [(a1.iid, True, True, True)]
    assert set(decode_bundle(a1.c.bundle()).signed_pre_keys) == {a1.iid}

    # a2's contact code imported on a1: our own identity, so a device awaiting approval (not a contact)
    rc, out, err = a1.cli("contact", "import", a2.code())
    assert rc == 0, err
    assert "YOUR OWN identity" in out and f"keyagent devices approve {a2.iid}" in out
    r = rows(a1)
    assert list(r) == [a1.iid, a2.iid]
    assert r[a2.iid]["enabled"] is False and r[a2.iid]["active"] is False and r[a2.iid]["is_self"] is False
    assert r[a1.iid]["is_self"] is True and int(str(r[a2.iid]["last_activity_ns"])) > 0
    rc, out, err = a1.cli("contact", "import", a1.code())  # our own code on this device: nothing to do
    assert rc == 0 and "THIS device's own contact code" in out, err
    assert list(rows(a1)) == [a1.iid, a2.iid]
    rc, out, _ = a1.cli("devices", "installations")
    assert "awaiting approval" in out and f"keyagent devices approve {a2.iid}" in out
    # not approved: a2 gets no copy and is not in our bundle
    m0 = a1.c.encrypt(bob, b"before approval", b.c.bundle())
    assert a2.iid not in m0.installations and bundle_ids(m0.message) == {a1.iid}
    assert b.c.decrypt(alice, m0.message).payload == b"before approval"

    # approve by a unique prefix through the CLI
    rc, out, err = a1.cli("devices", "approve", a2.iid[:8])
    assert rc == 0, err
    assert f"approved {a2.iid}" in out
    r = rows(a1)
    assert r[a2.iid]["enabled"] is True and r[a2.iid]["active"] is True
    assert set(decode_bundle(a1.c.bundle()).signed_pre_keys) == {a1.iid, a2.iid}
    # the next message carries the new bundle and a copy for a2 (X3DH with a2's prekey)
    m1 = a1.c.encrypt(bob, b"after approval")
    assert bundle_ids(m1.message) == {a1.iid, a2.iid}
    assert set(m1.installations) == {b.iid, a2.iid}
    assert a2.c.decrypt(alice, m1.message).payload == b"after approval"
    # Bob learns a2 from that bundle alone (he never heard from a2) and now sends to it too
    assert b.c.decrypt(alice, m1.message).payload == b"after approval"
    to_alice = b.c.encrypt(alice, b"to both of you")
    assert set(to_alice.installations) == {a1.iid, a2.iid}
    assert a1.c.decrypt(bob, to_alice.message).payload == b"to both of you"
    assert a2.c.decrypt(bob, to_alice.message).payload == b"to both of you"

    # disable: no more copies, and the bundle on the next message no longer names a2
    rc, out, err = a1.cli("devices", "disable", a2.iid)
    assert rc == 0, err
    assert f"disabled {a2.iid}" in out
    assert rows(a1)[a2.iid]["enabled"] is False
    m2 = a1.c.encrypt(bob, b"after disable")
    assert a2.iid not in m2.installations and bundle_ids(m2.message) == {a1.iid}
    with pytest.raises(AgentError) as exc:  # a2 is no longer sent to
        a2.c.decrypt(alice, m2.message)
    assert exc.value.code == "NO_SESSION"
    # the client API says the same as the CLI and returns the new bundle
    new_bundle = a1.c.approve_device(a2.iid)
    assert set(decode_bundle(new_bundle).signed_pre_keys) == {a1.iid, a2.iid}
    assert set(decode_bundle(a1.c.disable_device(a2.iid)).signed_pre_keys) == {a1.iid}


def test_own_device_seen_in_a_message_and_at_most_two_others_active(agents: AgentFactory) -> None:
    a = [device(agents, f"a{i}", ALICE_SECRET) for i in range(4)]
    b = device(agents, "b", BOB_SECRET)
    alice, bob = a[0].identity, b.identity
    # a[1..3] write to Bob; a[0] sees those messages (not for it): NO_SESSION not_paired, but it lists them
    for other in a[1:]:
        msg = other.c.encrypt(bob, b"from a sibling", b.c.bundle())
        with pytest.raises(AgentError) as exc:
            a[0].c.decrypt(alice, msg.message)
        assert exc.value.code == "NO_SESSION" and exc.value.reason == "not_paired"
    listed = a[0].c.devices()
    assert [d.installation_id for d in listed][0] == a[0].iid
    assert {d.installation_id for d in listed[1:]} == {x.iid for x in a[1:]}
    assert not any(d.enabled for d in listed[1:])
    for other in a[1:]:
        _, devices = a[0].c.set_device(other.iid, True)
    # three approved, but only self + the newest 2 take part (3 installations per identity)
    active = [d.installation_id for d in devices if d.active]
    assert len(active) == 3 and active[0] == a[0].iid
    assert all(d.enabled for d in devices)
    newest_two = [d.installation_id for d in devices[1:3]]
    assert active[1:] == newest_two
    assert devices[1].last_activity_ns >= devices[2].last_activity_ns >= devices[3].last_activity_ns
    idle = devices[3].installation_id
    m = a[0].c.encrypt(bob, b"hi", b.c.bundle())
    assert bundle_ids(m.message) == {a[0].iid, *newest_two}
    assert set(m.installations) == {b.iid, *newest_two} and idle not in m.installations
    rc, out, _ = a[0].cli("devices", "installations")
    assert rc == 0 and "only the newest 2" in out
    # approvals are durable: after a restart the same devices are enabled and active, the bundle unchanged
    listing = [(d.installation_id, d.enabled, d.active) for d in a[0].c.devices()]
    a[0].c.close()
    a[0].proc.kill()
    a[0].proc.start()
    a[0].c = a[0].proc.client()
    assert [(d.installation_id, d.enabled, d.active) for d in a[0].c.devices()] == listing
    assert set(decode_bundle(a[0].c.bundle()).signed_pre_keys) == {a[0].iid, *newest_two}


def test_device_requests_reject_bad_ids_and_change_nothing(agents: AgentFactory) -> None:
    a1, a2 = device(agents, "a1", ALICE_SECRET), device(agents, "a2", ALICE_SECRET)
    a1.c.add_bundle(a2.c.bundle())
    before = state(a1)
    for bad, enabled in ((a1.iid, True), (a1.iid, False), ("0" * 36, True), ("none", True), ("", False),
                         ("x" * 129, True), ("a\nb", True)):
        with pytest.raises(AgentError) as exc:
            a1.c.set_device(bad, enabled)
        assert exc.value.code == "BAD_REQUEST", bad
    # a peer's installation is not ours to approve
    b = device(agents, "b", BOB_SECRET)
    a1.c.add_bundle(b.c.bundle())
    with pytest.raises(AgentError) as exc:
        a1.c.approve_device(b.iid)
    assert exc.value.code == "BAD_REQUEST"
    after_peer = state(a1)
    assert after_peer == before
    # CLI: unknown id and too-short prefix are input errors (exit 2), our own id is the agent's refusal (exit 1)
    for args, code in ((("devices", "approve", "ffffffff"), 2), (("devices", "approve", a2.iid[:3]), 2),
                       (("devices", "disable", a1.iid), 1)):
        rc, out, err = a1.cli(*args)
        assert rc == code, (args, err)
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("keyagent: ")
    assert state(a1) == before


def test_devices_refused_while_locked(agents: AgentFactory) -> None:
    a1 = device(agents, "a1", ALICE_SECRET)
    a1.c.lock()
    for call in (a1.c.devices, lambda: a1.c.approve_device("whatever"), lambda: a1.c.public_message(b"x")):
        with pytest.raises(AgentError) as exc:
            call()
        assert exc.value.code == "LOCKED"
    a1.c.unlock(PASSPHRASE)
    assert [d.is_self for d in a1.c.devices()] == [True]


# --- contact exchange --------------------------------------------------------------------------------------------


def test_contact_round_trip_between_two_agents(agents: AgentFactory, tmp_path: Path) -> None:
    a, b = device(agents, "alice", ALICE_SECRET), device(agents, "bob", BOB_SECRET)
    png, svg = tmp_path / "bob.png", tmp_path / "bob.svg"
    rc, out, err = b.cli("contact", "--png", str(png), "--svg", str(svg))
    assert rc == 0, err
    lines = out.splitlines()
    code = next(line for line in lines if line.startswith(PREFIX))
    assert sum("█" in line or "▀" in line or "▄" in line for line in lines) > 20  # the terminal QR code
    assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()
    assert decode_card(code).identity == b.identity
    # Bob's own screen shows his fingerprint ...
    names = visual_fields(b.identity)
    for want in (zq3_encode(b.identity), str(names["alias"]), safety_number(b.identity)):
        assert want in out
    # ... and Alice's import shows the same one
    assert a.c.encrypt(b.identity, b"no bundle yet").forward_secrecy is False
    rc, out, err = a.cli("contact", "import", code[:60] + "\n" + code[60:])  # a wrapped code is fine
    assert rc == 0, err
    for want in ("verified", zq3_encode(b.identity), str(names["alias"]), str(names["emoji_hash"]),
                 safety_number(b.identity), b.iid):
        assert want in out
    sent = a.c.encrypt(b.identity, b"hello bob")  # the imported bundle is used: X3DH, forward secrecy
    assert sent.forward_secrecy is True and sent.installations == [b.iid]
    assert b.c.decrypt(a.identity, sent.message).payload == b"hello bob"
    # the other spellings: --import, a bare code, JSON, --no-store
    rc, out, err = b.cli("contact", "--json", "--no-qr", "--import", a.code(), "--no-store")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["stored"] is False and doc["own_identity"] is False
    assert doc["fingerprint"]["chat_key"] == zq3_encode(a.identity) and doc["installations"] == [a.iid]
    assert doc["fingerprint"]["safety_number"] == safety_number(a.identity)
    rc, out, err = b.cli("contact", a.code(), "--json")
    assert rc == 0 and json.loads(out)["stored"] is True
    rc, out, err = b.cli("contact", "import", "-", input=a.code().encode())
    assert rc == 0, err
    rc, out, err = a.cli("contact", "--json")
    assert rc == 0 and json.loads(out)["contact_code"].startswith(PREFIX)
    assert json.loads(out)["fingerprint"]["name"] == visual_fields(a.identity)["alias"]


def _forged(bundle: bytes) -> bytes:
    """Bob's bundle re-signed by Mallory: the checksum is fine, the signature is someone else's."""
    b = decode_bundle(bundle)
    b.signature = MALLORY.sign(signature_digest(b))
    return encode(b)


def test_bad_contact_codes_are_refused_and_store_nothing(agents: AgentFactory) -> None:
    a, b = device(agents, "alice", ALICE_SECRET), device(agents, "bob", BOB_SECRET)
    code = b.code()
    i = len(code) // 2
    flipped = code[:i] + ("2" if code[i] != "2" else "3") + code[i + 1:]
    bad = {
        "bit flip": flipped,
        "truncated": code[:-7],
        "wrong prefix": "kac2" + code[len(PREFIX):],
        "no prefix": code[len(PREFIX):],
        "not base58": code[:20] + "0OIl" + code[24:],
        "someone else's signature": encode_card(_forged(b.c.bundle())),
        "prefix only": PREFIX,
        "oversize": code * 20,
    }
    before_sessions = a.c.list_sessions()
    for what, text in bad.items():
        rc, out, err = a.cli("contact", "import", text)
        assert rc == 2, (what, err)
        assert out == "" and len(err.splitlines()) == 1, what
        assert err.startswith("keyagent: BAD_INPUT: invalid contact code: "), (what, err)  # code first
        if what == "someone else's signature":
            assert "not signed by the identity key it names" in err
    # the agent refuses the forged bundle too (it verifies what add_bundle gets), with a typed error
    with pytest.raises(AgentError) as exc:
        a.c.add_bundle(_forged(b.c.bundle()))
    assert exc.value.code == "BAD_SIGNATURE"
    # nothing was stored: no add_bundle ever succeeded, no device, no session, and no bundle for Bob
    assert not [line for line in a.proc.audit_lines() if line.get("type") == "add_bundle" and line.get("result") == "ok"]
    assert [d.is_self for d in a.c.devices()] == [True]
    assert a.c.list_sessions() == before_sessions
    assert a.c.encrypt(b.identity, b"still unknown").forward_secrecy is False
    # a peer chat key is not a contact code: a clear pointer to the right command
    rc, out, err = a.cli("contact", zq3_encode(b.identity))
    assert rc == 2 and "inspect-key" in err and out == ""
    rc, out, err = a.cli("contact", "import")
    assert rc == 2 and "needs the CODE" in err


_CODE = encode_card(encode(sign_bundle(MemoryKey(b"\x0b" * 32), {
    "3f1c2a4e-0000-4000-8000-000000000001": (MemoryKey(b"\x0c" * 32).public_key(), 1, 1)}, 1_700_000_000_000_000_000)))
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(_CODE) - 1), st.sampled_from(_B58 + "0OIl+/ ="))
def test_any_changed_character_is_refused(pos: int, char: str) -> None:
    """What the CLI checks before anything reaches the agent: every one-character change fails (checksum,
    alphabet or prefix), never decodes to some other valid contact."""
    changed = _CODE[:pos] + char + _CODE[pos + 1:]
    if changed == _CODE:
        return  # the same character drawn: no change (a blank is a deletion: whitespace is ignored)
    with pytest.raises(ProtocolError):
        decode_card(changed)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(_CODE) - 1))
def test_any_truncation_is_refused(n: int) -> None:
    with pytest.raises(ProtocolError):
        decode_card(_CODE[:n])


# --- public messages ---------------------------------------------------------------------------------------------


def test_public_message_passes_unencrypted_and_is_marked(agents: AgentFactory) -> None:
    a, b = device(agents, "alice", ALICE_SECRET), device(agents, "bob", BOB_SECRET)
    wire = a.c.public_message(b"hello, everyone")
    msg = decode_protocol_message(wire)
    assert msg.public_message == b"hello, everyone" and not msg.encrypted_message  # in the clear, no entries
    assert msg.installation_id == a.iid and set(msg.bundles[0].signed_pre_keys) == {a.iid}
    got = b.c.decrypt(a.identity, wire)
    assert got.payload == b"hello, everyone" and got.public is True and got.forward_secrecy is False
    assert got.confirm_ref == b""
    # a private message is not marked public
    private = b.c.decrypt(a.identity, a.c.encrypt(b.identity, b"secret", b.c.bundle()).message)
    assert private.public is False and private.forward_secrecy is True
    # the CLI: public-message warns, decrypt --json reports it and warns
    cp = a.proc.cli("public-message", input=b"cli public")
    assert cp.returncode == 0 and b"NOT encrypted" in cp.stderr
    assert decode_protocol_message(cp.stdout).public_message == b"cli public"
    cp2 = b.proc.cli("decrypt", "--from", zq3_encode(a.identity), "--json", input=cp.stdout)
    assert cp2.returncode == 0, cp2.stderr
    doc = json.loads(cp2.stdout)
    assert doc["public"] is True and doc["forward_secrecy"] is False
    assert bytes.fromhex(doc["payload"]) == b"cli public" and b"PUBLIC message" in cp2.stderr
    # a forged bundle on a public message is refused like on any other (nothing marked public is trusted more)
    forged = decode_protocol_message(wire)
    forged.bundles[0].signature = MALLORY.sign(signature_digest(forged.bundles[0]))
    with pytest.raises(AgentError) as exc:
        b.c.decrypt(a.identity, encode(forged))
    assert exc.value.code == "BAD_SIGNATURE"
