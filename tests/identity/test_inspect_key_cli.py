"""``keyagent inspect-key IDENTITY``: every written form of a key gives the same document, matching Status's
vectors; anything else is one BAD_IDENTITY line and exit 2."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.cli import main


def _forms(chat: dict[str, Any]) -> list[str]:
    return [chat["public_key_uncompressed"], chat["public_key_compressed"], chat["public_key_compressed"][2:],
            chat["compressed_key_zQ3"], chat["share_url_with_chat_key"],
            "https://status.app/u/CwSACg==#" + chat["compressed_key_zQ3"]]


def test_every_form_gives_the_vector_document(vectors: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    chat = vectors["identities"]["abandon_about_empty"]["chat"]
    docs = []
    for form in _forms(chat):
        assert main(["inspect-key", "--json", form]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    assert all(d == docs[0] for d in docs)
    d = docs[0]
    assert d["public_key"] == chat["public_key_uncompressed"] and d["compressed_key"] == chat["compressed_key_zQ3"]
    assert d["share_link"] == chat["share_url_with_chat_key"]
    assert d["alias"] == chat["alias"] and d["emoji_hash"] == " ".join(chat["emoji_hash"])
    assert d["color_hash"] == chat["color_hash"] and d["color_id"] == chat["color_id"]
    assert d["contact_code_chat_id"] == chat["contact_code_chat_id"]
    assert d["contact_code_topic"] == chat["contact_code_content_topic"]
    assert d["contact_code_key"] == "0x" + chat["contact_code_symkey"]
    assert "key_uid" not in d and "installation_id" not in d  # not knowable from a peer's key
    assert main(["inspect-key", chat["compressed_key_zQ3"]]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith(chat["alias"]) and chat["contact_code_content_topic"] in text


@pytest.mark.parametrize("bad", ["", "zQ3sh", "0x04", "https://status.app/u#", "http://status.app/u#zQ3sh",
                                 "https://status.app/u#ensname.eth", "abandon about", "0x" + "02" * 33 + "00"])
def test_bad_forms_are_one_line_exit_2(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect-key", bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith("keyagent: BAD_IDENTITY: ")
