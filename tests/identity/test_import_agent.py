"""The agent speaks Status identity: whoami fields over the socket and the CLI, and every written form of a peer key
accepted where a peer identity is taken (CLI and socket), anything else refused with BAD_IDENTITY / BAD_REQUEST."""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

import pytest

from agent.client import AgentClient, AgentError
from agent.core import secp256k1
from agent.core.identity import contact_code, legacy_key, share_link, visual_fields, zq3_encode
from tests.daemon.agentproc import AgentFactory, AgentProc


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[AgentProc, AgentProc]]:
    factory = AgentFactory()
    try:
        alice, bob = factory.new(), factory.new()
        alice.start()
        bob.start()
        yield alice, bob
    finally:
        factory.close()


def _forms(pub33: bytes) -> list[str]:
    return [legacy_key(pub33), "0x" + pub33.hex(), pub33.hex(), zq3_encode(pub33), share_link(pub33),
            "  " + share_link(pub33) + "\n"]


def test_identity_response_carries_status_fields(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, _ = pair
    with alice.client() as c:
        ident = c.identity()
    pub = ident.identity_public_key
    # a generated key (not imported from a phrase): the UID Status gives a raw private-key import
    assert ident.key_uid == "0x" + hashlib.sha256(secp256k1.decompress(pub)).hexdigest()
    assert ident.key_uid_origin == "chat_key"
    assert ident.share_link == "https://status.app/u#" + ident.compressed_key
    cc = contact_code(pub)
    assert ident.contact_code_topic == cc.content_topic and ident.contact_code_key == cc.sym_key
    assert len(ident.contact_code_key) == 32


def test_whoami_json_and_text(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, _ = pair
    cp = alice.cli("whoami", "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    pub = bytes.fromhex(doc["identity"])
    assert doc["public_key"].startswith("0x04") and len(doc["public_key"]) == 132
    assert doc["public_key"] == legacy_key(pub)
    assert doc["compressed_key"].startswith("zQ3sh") and doc["compressed_key"] == zq3_encode(pub)
    assert doc["share_link"] == share_link(pub)
    assert doc["installation_id"]  # the agent was started unlocked, so its store is open
    assert doc["key_uid"] == "0x" + hashlib.sha256(secp256k1.decompress(pub)).hexdigest()
    cc = contact_code(pub)
    assert doc["contact_code_topic"] == cc.content_topic and doc["contact_code_key"] == "0x" + cc.sym_key.hex()
    vis = visual_fields(pub)
    assert doc["alias"] == vis["alias"] and doc["emoji_hash"] == vis["emoji_hash"]
    assert doc["color_hash"] == vis["color_hash"] and doc["color_id"] == vis["color_id"]
    text = alice.cli("whoami")
    assert text.returncode == 0, text.stderr
    out = text.stdout.decode()
    lines = out.splitlines()
    assert lines[0].startswith("Name:") and lines[0].endswith(str(vis["alias"]))
    for key, label in (("compressed_key", "Chat key:"), ("public_key", "Public key:"), ("share_link", "Share link:"),
                       ("installation_id", "Installation:"), ("contact_code_topic", "Contact code topic:"),
                       ("key_uid", "Key UID:")):
        assert sum(line.startswith(label) and doc[key] in line for line in lines) == 1, key
    assert "not imported from a recovery phrase" in out


def test_every_written_form_reaches_the_same_session(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, bob = pair
    with alice.client() as ca, bob.client() as cb:
        a33, b33 = ca.identity().identity_public_key, cb.identity().identity_public_key
        ca.add_bundle(cb.bundle())
        for i, form in enumerate(_forms(b33)):
            m = ca.encrypt(form, f"m{i}".encode())  # text over the socket, parsed by the agent
            assert m.forward_secrecy
            got = cb.decrypt(_forms(a33)[i], m.message)
            assert got.payload == f"m{i}".encode()
            cb.confirm([got.confirm_ref])
        for i, form in enumerate(_forms(b33)[:5]):  # and through the CLI
            enc = alice.cli("encrypt", "--to", form, input=f"cli{i}".encode())
            assert enc.returncode == 0, enc.stderr
            dec = bob.cli("decrypt", "--from", _forms(a33)[4 - i], input=enc.stdout)
            assert dec.returncode == 0 and dec.stdout == f"cli{i}".encode(), dec.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "zQ3shNotAKey",
        "https://status.app/u#notakey",
        "https://evil.example/u#zQ3shZeEoqbDNxPkTbKeq4sJaSyJhTjk2rYuHY8qKhUEnV9nG",
        "0x05" + "00" * 64,
        "bob",
        "0x" + "g" * 66,
    ],
)
def test_socket_rejects_identity_text_that_is_no_key(pair: tuple[AgentProc, AgentProc], bad: str) -> None:
    alice, _ = pair
    with alice.client() as c:
        for call in (lambda: c.encrypt(bad, b"x"), lambda: c.decrypt(bad, b"\x0a\x00")):
            with pytest.raises(AgentError) as ei:
                call()
            assert ei.value.code == "BAD_IDENTITY", ei.value.message
            assert ei.value.message  # the parser's reason, one line


@pytest.mark.parametrize("bad", [b"", b"\x02" * 32, b"\x05" + b"\x01" * 32, b"\x04" + b"\x00" * 64, b"\xff" * 70,
                                 b"zQ3\x00" + b"a" * 46])
def test_socket_binary_junk_stays_bad_request(pair: tuple[AgentProc, AgentProc], bad: bytes) -> None:
    alice, _ = pair
    with alice.client() as c, pytest.raises(AgentError) as ei:
        c.encrypt(bad, b"x")
    assert ei.value.code == "BAD_REQUEST"


def test_cli_rejects_bad_identity_with_one_line(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, _ = pair
    for bad in ("not-an-identity", "zQ3sh", "https://status.app/u#", "0x04"):
        cp = alice.cli("encrypt", "--to", bad, input=b"x")
        assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1, cp.stderr
        cp = alice.cli("decrypt", "--from", bad, input=b"\x0a\x00")
        assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1, cp.stderr


def test_whoami_without_an_agent_and_without_config_fails_clearly(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, _ = pair
    # no agent and no config.json in that home: nothing to read offline, exit 3 with one line
    cp = alice.cli("--home", str(alice.home / "nowhere"), "whoami", sock_env=False)
    assert cp.returncode == 3 and len(cp.stderr.splitlines()) == 1, cp.stderr


def test_waku_requests_take_identity_text_and_agree_with_whoami(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, bob = pair
    with alice.client() as ca, bob.client() as cb:
        b33 = cb.identity().identity_public_key
        by_bytes = ca.waku_negotiated(b33)
        for form in _forms(b33):
            assert ca.waku_negotiated(form) == by_bytes
        with pytest.raises(AgentError) as ei:
            ca.waku_negotiated("zQ3shTruncated")
        assert ei.value.code == "BAD_IDENTITY"
        ident, cc = ca.identity(), ca.waku_contact_code()
        assert (ident.contact_code_topic, ident.contact_code_key) == (cc.content_topic, cc.sym_key)


def test_waku_seal_takes_identity_text(pair: tuple[AgentProc, AgentProc]) -> None:
    alice, bob = pair
    with alice.client() as ca, bob.client() as cb:
        b33 = cb.identity().identity_public_key
        for form in (zq3_encode(b33), share_link(b33), legacy_key(b33)):
            wire = ca.waku_seal(b"to bob", to=form.encode(), sign=True)
            opened = cb.waku_open(wire)
            assert opened.payload == b"to bob" and opened.mode == "asymmetric"
        with pytest.raises(AgentError) as ei:
            ca.waku_seal(b"x", to=b"https://status.app/u#zQ3nope")
        assert ei.value.code == "BAD_IDENTITY"
