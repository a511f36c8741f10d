"""The status_identity-schema replayer: passes the shared file, names every tampered field, never crashes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.conformance.identity import recognise, replay_identity, replay_identity_detail


def _flip(value: str) -> str:
    """Change the last character to another one of the same kind (keeps hex hex, base58 base58)."""
    last = value[-1]
    repl = {"0": "1", "a": "b", "A": "B", "z": "y", "Z": "Y", "9": "8", "f": "e", "F": "E"}.get(last)
    if repl is None:
        repl = "2" if last != "2" else "3"
    return value[:-1] + repl


def test_shared_file_replays_clean(vectors: dict[str, Any]) -> None:
    assert recognise(vectors)
    passed, failures, skipped = replay_identity_detail(vectors)
    assert failures == []
    assert passed == len(vectors["identities"]) + 1 + len(vectors["upstream"])  # + the paths table
    assert skipped == []


def _identity_fields(v: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for k in ("seed", "master_xprv", "master_public_key", "key_uid", "master_address"):
        out.append((k,))
    for name, d in v["derived"].items():
        for k in ("private_key", "public_key", "address"):
            out.append(("derived", name, k))
    for k in (
        "public_key_uncompressed",
        "public_key_compressed",
        "compressed_key_zQ3",
        "share_url_with_chat_key",
        "contact_code_chat_id",
        "contact_code_content_topic",
        "contact_code_symkey",
        "partitioned_chat_id",
        "partitioned_content_topic",
        "alias",
        "emoji_hash",
        "color_hash",
        "color_id",
    ):
        out.append(("chat", k))
    return out


def _mutate(value: Any) -> Any:
    """A different value of the same type: strings flipped, lists with an element changed, ints bumped."""
    if isinstance(value, str):
        return _flip(value)
    if isinstance(value, int):
        return (value + 1) % 11
    if isinstance(value, list):
        changed = copy.deepcopy(value)
        changed[-1] = _mutate(changed[-1])
        return changed
    raise AssertionError(f"no mutation for {type(value).__name__}")


def test_every_tampered_identity_field_is_reported(vectors: dict[str, Any]) -> None:
    base = vectors["identities"]["abandon_about_empty"]
    fields = _identity_fields(base)
    assert len(fields) > 20
    for path in fields:
        doc = {"identities": {"x": copy.deepcopy(base)}}
        node: Any = doc["identities"]["x"]
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = _mutate(node[path[-1]])
        passed, failures = replay_identity(doc)
        assert passed == 0, path
        assert failures and all(f.startswith("identities.x: ") for f in failures), path
        assert any(path[-1] in f for f in failures), (path, failures)


def test_tampered_upstream_entries_are_reported(vectors: dict[str, Any]) -> None:
    up = vectors["upstream"]
    cases = [
        ("status_go_generator_test_TREZOR", ("extendedMasterKey",)),
        ("status_go_generator_test_TREZOR", ("m/44'/60'/0'/0/1", "address")),
        ("nim_status_bip32_chat_key", ("m/43'/60'/1581'/0'/0", "private_key")),
        ("nim_status_keyuid_of_imported_key", ("key_uid",)),
        ("multiformat", ("cases", 0, "zQ3")),
        ("multiformat", ("cases", 0, "multibase_hex")),
        ("share_urls", ("user_url_with_chat_key",)),
        ("share_urls", ("fragment_public_key",)),
        ("alias", ("seed_42",)),
        ("alias", ("alias",)),
        ("emoji_and_color_hash", ("emoji_hash",)),
        ("emoji_and_color_hash", ("color_hash",)),
    ]
    for entry, path in cases:
        doc = {"paths": vectors["paths"], "upstream": {entry: copy.deepcopy(up[entry])}}
        node: Any = doc["upstream"][entry]
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = _mutate(node[path[-1]])
        passed, failures = replay_identity(doc)
        assert passed == 1, (entry, path)  # only the paths table passes
        assert failures and failures[0].startswith(f"upstream.{entry}: "), (entry, path, failures)


def test_partial_identity_with_bad_checksum_replays() -> None:
    # facts note §1.7: the invalid-checksum phrase status-go derives anyway (Go and Python agree)
    doc = {
        "identities": {
            "test_x12": {
                "mnemonic": "test test test test test test test test test test test test",
                "key_uid": "0x18b32060da04bd2a226c67cdd65f7d623f2309a1851f64a4f8ddff9390bcae38",
                "chat": {
                    "public_key_uncompressed": (
                        "0x042ef464bca2a68b9d64642b59fdd49506b62a76fc4bfabbb89ca1e85eca6324237d5aa00a250867e491dda"
                        "3068760aba8d3e166063c3e205cfecbda32ef7ac6d8"
                    ),
                    "alias": "Curly Precious Oropendula",
                },
            }
        }
    }
    assert replay_identity(doc) == (1, [])


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"identities": {}},
        {"identities": {"a": {"seed": "00"}}},
        {"upstream": {}},
        {"keys": {}, "vectors": []},
        [],
        "x",
    ],
)
def test_other_documents_are_not_recognised(doc: Any) -> None:
    assert not recognise(doc)
    passed, failures = replay_identity(doc)
    assert passed == 0 and len(failures) == 1 and "not in the status_identity schema" in failures[0]


def test_bad_data_becomes_failure_lines_not_crashes(vectors: dict[str, Any]) -> None:
    doc = {
        "paths": {"chat": "m/44'/60'/0'/0/0"},
        "upstream": {
            "k": {"public_key": "0xzz", "key_uid": "0x00"},
            "m": {"cases": [{"public_key": 5, "zQ3": "zQ3"}]},
            "s": {"fragment_public_key": "0x04", "user_url_with_chat_key": "https://evil/u#x"},
            "p": {"mnemonic": "abandon", "m/x": {"private_key": "00"}},
        },
        "identities": {"i": {"mnemonic": "", "key_uid": "0x"}, "j": {"mnemonic": "abandon", "derived": {"w": {}}}},
    }
    passed, failures, _ = replay_identity_detail(doc)
    assert passed == 0
    names = {f.split(":")[0] for f in failures}
    assert names == {"paths", "upstream.k", "upstream.m", "upstream.s", "upstream.p", "identities.i", "identities.j"}


def _walk(node: Any, where: str, out: list[tuple[str, Any]]) -> None:
    """The registry's tree walk in miniature: offer every dict/list, descend only into unclaimed nodes."""
    from agent.conformance.identity import node_cases

    if isinstance(node, (dict, list)):
        cases = node_cases(node, where)
        if cases is not None:
            out.extend(cases)
            return
    if isinstance(node, dict):
        for k, v in node.items():
            _walk(v, f"{where}.{k}" if where else str(k), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{where}[{i}]", out)


def test_node_level_cases_cover_the_shared_file(vectors: dict[str, Any]) -> None:
    cases: list[tuple[str, Any]] = []
    _walk(vectors, "", cases)
    names = sorted(n for n, _ in cases)
    assert names == sorted(
        [
            "paths",
            "upstream.status_go_generator_test_TREZOR",
            "upstream.nim_status_bip32_chat_key",
            "upstream.nim_status_keyuid_of_imported_key",
            "upstream.multiformat",
            "upstream.share_urls",
            "upstream.alias",
            "upstream.emoji_and_color_hash",
        ]
        + [f"identities.{k}" for k in vectors["identities"]]
    )
    assert all(run() == [] for _, run in cases)


def test_node_level_cases_report_tampering_and_empty_claims(vectors: dict[str, Any]) -> None:
    doc = {"wrapper": [copy.deepcopy(vectors["identities"]["abandon_about_empty"])]}
    doc["wrapper"][0]["key_uid"] = _flip(doc["wrapper"][0]["key_uid"])
    cases: list[tuple[str, Any]] = []
    _walk(doc, "", cases)
    assert [n for n, _ in cases] == ["wrapper[0]"]
    lines = cases[0][1]()
    assert len(lines) == 1 and lines[0].startswith("key_uid ")
    only_alias: dict[str, Any] = {"mnemonic": "abandon " * 11 + "about", "chat": {"alias": "Darkviolet Overcooked Bittern"}}
    cases = []
    _walk(only_alias, "", cases)
    assert cases[0][1]() == []
    only_alias["chat"]["alias"] = "Darkviolet Overcooked Bittert"
    assert cases[0][1]() != []
    unknown = {"mnemonic": "abandon " * 11 + "about", "chat": {"nickname": "x"}}
    cases = []
    _walk(unknown, "", cases)
    assert cases[0][1]() == ["no field keyagent implements was compared"]


def test_registry_replays_the_file_and_reports_tampering(vectors: dict[str, Any], tmp_path: Any) -> None:
    import json

    from agent.conformance import replay_data, replay_file
    from tests.identity.conftest import VECTORS

    clean = replay_file(VECTORS)
    cases: list[tuple[str, Any]] = []
    _walk(vectors, "", cases)
    assert clean.ok and clean.passed == len(cases) and clean.failed == 0
    doc = copy.deepcopy(vectors)
    chat = doc["identities"]["abandon_about_empty"]["chat"]
    chat["partitioned_content_topic"] = _flip(chat["partitioned_content_topic"])
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    res = replay_file(bad)
    assert res.failed == 1 and res.passed == clean.passed - 1
    assert len(res.failures) == 1 and "partitioned_content_topic" in res.failures[0]
    assert replay_data({"a": {"b": [doc["upstream"]["multiformat"]]}}).passed == 1  # found at any depth
