"""Unit tests of agent/identity/whoami.py: the whoami document and its text (what ``keyagent whoami`` prints)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import coincurve
import pytest

from agent.core import secp256k1
from agent.core.errors import MalformedKey
from agent.core.identity import legacy_key, share_link
from agent.identity.record import StatusRecord, read_status_record
from agent.identity.whoami import identity_document, identity_text

PUB = bytes.fromhex("031c0b489f112aa9334a0c41e349757e3edd6b0ce761bebc6b14b4901a10aa7796")
UID = "0x16f5b9c7657df5e0b45016292d852a36622fb39b63c28017ccf21633270858f1"
WHOAMI_FIELDS = {"public_key", "compressed_key", "key_uid", "installation_id", "share_link"}


def test_identity_document_fields_and_text() -> None:
    pub = coincurve.PrivateKey().public_key.format()
    uid = "0x" + hashlib.sha256(secp256k1.decompress(pub)).hexdigest()
    doc = identity_document(secp256k1.decompress(pub), StatusRecord(uid, "chat_key"), "inst-1")
    assert doc["identity"] == pub.hex() and doc["public_key"] == legacy_key(pub)
    assert len(str(doc["public_key"])) == 132 and str(doc["compressed_key"]).startswith("zQ3sh")
    assert doc["share_link"] == share_link(pub) and doc["installation_id"] == "inst-1"
    assert {"alias", "emoji_hash", "color_hash", "color_id", "contact_code_topic", "contact_code_key"} <= set(doc)
    assert "encryption_public_key" not in doc
    lean = identity_document(pub, StatusRecord(uid, "recovery_phrase", "0x04ab"), "", visual=False, contact=False)
    assert "alias" not in lean and "contact_code_topic" not in lean and lean["encryption_public_key"] == "0x04ab"
    text = identity_text(doc)
    assert "not imported from a recovery phrase" in text and "inst-1" in text
    assert "unknown" in identity_text(lean) and "not imported" not in identity_text(lean)
    with pytest.raises(MalformedKey):
        identity_document(pub[:-1], StatusRecord(uid, "chat_key"), "")


def test_recorded_key_uid_is_only_believed_in_its_form_and_bad_keys_are_refused(tmp_path: Path) -> None:
    """A UID recorded in config.json is shown only when it is 0x + 64 lower-case hex; other text is not believed."""
    def recorded(uid: str) -> StatusRecord:
        doc = {"identity_public_key": PUB.hex(), "status": {"key_uid": uid, "key_uid_origin": "recovery_phrase"}}
        (tmp_path / "config.json").write_text(json.dumps(doc))
        return read_status_record(str(tmp_path), PUB)

    ok = identity_document(PUB, recorded(UID), "a1b2", visual=False, contact=False)
    assert WHOAMI_FIELDS <= set(ok) and ok["key_uid"] == UID and ok["key_uid_origin"] == "recovery_phrase"
    for uid in ("", UID[2:], UID.upper(), UID[:-1], UID + "0", "0x" + "g" * 64):
        record = recorded(uid)
        assert record.key_uid != uid and record.key_uid_origin == "chat_key"
    with pytest.raises(MalformedKey):
        identity_document(PUB[:-1], StatusRecord(UID, "recovery_phrase"), "a1b2")


def test_whoami_text_lists_every_field_once() -> None:
    doc = identity_document(PUB, StatusRecord(UID, "recovery_phrase"), "a1b2", visual=False, contact=False)
    text = identity_text(doc)
    lines = text.splitlines()
    shown = [k for k in doc if k not in ("identity", "key_uid_origin")]
    assert len(lines) == len(shown) and lines[0].startswith("Chat key:")
    assert lines[0].endswith(str(doc["compressed_key"]))
    for key in shown:
        assert sum(str(doc[key]) in line for line in lines) >= 1


def test_whoami_text_with_visual_fields() -> None:
    doc = identity_document(PUB, StatusRecord(UID, "recovery_phrase"), "a1b2", contact=False)
    lines = identity_text(doc).splitlines()
    # the shared vector's alias
    assert lines[0].startswith("Name:") and lines[0].endswith(" Darkviolet Overcooked Bittern")
    assert lines[1].startswith("Emoji hash:") and lines[2].startswith("Colour hash:")
