"""Replay files in the schema of ``status_identity.json`` (Status identity vectors), recognised by shape.

A document is ours when it has an ``identities`` object whose entries carry a ``mnemonic`` string, or an
``upstream`` object next to a ``paths`` table. Every field is optional and checked when present, so
files holding more identities (or fewer fields, e.g. a bad-checksum phrase with only its key UID and
chat key) replay too:

* ``identities.*``: seed, master xprv / public key / address, key UID, each ``derived`` path's private
  key, public key and EIP-55 address, and the chat key's ``0x04…``, compressed, ``zQ3…`` and share-link
  forms, the contact-code chat id / content topic / symmetric key and the partitioned topic (the last two
  through :mod:`agent.core.waku.topics`, the Waku layer's own derivations). The phrase is
  derived exactly as status-go does (a bad checksum warns, it does not stop the derivation).
* ``upstream.*`` by shape: a ``mnemonic`` entry (optional ``extendedMasterKey`` and ``m/…`` path entries),
  ``public_key`` + ``key_uid``, a ``cases`` list of multiformat keys, share links with a
  ``fragment_public_key``.
* ``paths``: names we know must map to the same path.

The chat key's three-word alias, emoji hash, colour hash and colour id are checked too, and upstream
entries of that shape (``public_key`` with ``alias`` / ``emoji_hash`` / ``color_hash``, ``seed_42``).
Fields listed in :data:`NOT_CHECKED` are ignored; a case that compares nothing is reported as skipped
(or, through the registry, as a failure), never counted as passed. Each case yields a pass or
failure lines ``"<case>: <field> ..."``; no exception escapes for bad data.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from typing import Any

from agent.conformance.registry import Case, register
from agent.core import secp256k1
from agent.core.hashing import keccak256
from agent.core.identity import names
from agent.core.identity import (
    PATHS,
    ExtendedKey,
    contact_code,
    derive_path,
    key_uid,
    legacy_key,
    master_key,
    parse_peer_identity,
    parse_share_link,
    phrase_to_seed,
    share_link,
    zq3_decode,
    zq3_encode,
)
from agent.core.waku import topics

__all__ = ["NOT_CHECKED", "recognise", "node_cases", "status_identity", "replay_identity", "replay_identity_detail"]

NOT_CHECKED: frozenset[str] = frozenset()  # every field of the shared schema is checked now


def recognise(doc: object) -> bool:
    """True for a document in the status_identity.json schema (by shape, not by name)."""
    if not isinstance(doc, dict):
        return False
    idents = doc.get("identities")
    if isinstance(idents, dict) and idents:
        return all(isinstance(v, dict) and isinstance(v.get("mnemonic"), str) for v in idents.values())
    return isinstance(doc.get("upstream"), dict) and isinstance(doc.get("paths"), dict)


def _eip55(addr20: bytes) -> str:
    h = addr20.hex()
    digest = keccak256(h.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(h))


def _hex(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected a hex string, got {type(value).__name__}")
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


class _Out:
    """Failure lines of one case, and how many fields it actually compared (0 → skipped, not passed)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.checked = 0

    def eq(self, field: str, got: object, want: object) -> None:
        self.checked += 1
        if got != want:
            self.lines.append(f"{field} {str(got)[:80]} != {str(want)[:80]}")

    def eq_hex(self, field: str, got: bytes, want: object) -> None:
        self.eq(field, got.hex(), _hex(want).hex())


class _Replayer:
    def __init__(self) -> None:
        self.passed = 0
        self.skipped: list[str] = []
        self.failures: list[str] = []

    def run(self, name: str, check: Callable[[_Out], None]) -> None:
        out = _Out()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a bad-checksum phrase is a valid case, as in status-go
                check(out)
        except Exception as exc:  # bad data must become a failure line, never a crash
            out.lines.append(f"{type(exc).__name__}: {exc}")
        if out.lines:
            self.failures.extend(f"{name}: {line}" for line in out.lines)
        elif out.checked:
            self.passed += 1
        else:
            self.skipped.append(name)

    # -- identities ---------------------------------------------------------------------------------
    def identity(self, v: dict[str, Any], out: _Out) -> None:
        seed = phrase_to_seed(v["mnemonic"], v.get("bip39_passphrase", ""))
        master = master_key(seed)
        try:
            if "seed" in v:
                out.eq_hex("seed", bytes(seed), v["seed"])
            if "master_xprv" in v:
                out.eq("master_xprv", master.xprv(), v["master_xprv"])
            mpub = master.public_key(False)
            if "master_public_key" in v:
                out.eq_hex("master_public_key", mpub, v["master_public_key"])
            if "key_uid" in v:
                out.eq("key_uid", key_uid(mpub), v["key_uid"])
            if "master_address" in v:
                out.eq("master_address", _eip55(secp256k1.address(mpub)), v["master_address"])
            derived = v.get("derived") or {}
            for name, d in derived.items():
                self._path(master, f"derived.{name}", d.get("path", PATHS.get(name, "")), d, out)
                if name in PATHS:
                    out.eq(f"derived.{name}.path", d.get("path", PATHS[name]), PATHS[name])
            chat = v.get("chat")
            if isinstance(chat, dict):
                k = derive_path(master, PATHS["chat"])
                try:
                    self._chat(k.public_key(True), chat, out)
                finally:
                    k.wipe()
        finally:
            master.wipe()
            seed[:] = bytes(len(seed))

    def _path(self, master: ExtendedKey, label: str, path: str, d: dict[str, Any], out: _Out) -> None:
        k = derive_path(master, path)
        try:
            if "private_key" in d:
                out.eq_hex(f"{label}.private_key", bytes(k.secret), d["private_key"])
            pub = k.public_key(False)
            if "public_key" in d:
                out.eq_hex(f"{label}.public_key", pub, d["public_key"])
            if "address" in d:
                out.eq(f"{label}.address", _eip55(secp256k1.address(pub)), d["address"])
        finally:
            k.wipe()

    def _chat(self, pub: bytes, c: dict[str, Any], out: _Out) -> None:
        cc = contact_code(pub)
        expected: dict[str, str] = {
            "public_key_uncompressed": legacy_key(pub),
            "public_key_compressed": "0x" + pub.hex(),
            "compressed_key_zQ3": zq3_encode(pub),
            "share_url_with_chat_key": share_link(pub),
            "contact_code_chat_id": cc.chat_id,
            "contact_code_content_topic": cc.content_topic,
            "contact_code_symkey": cc.sym_key.hex(),
        }
        expected.update(_partitioned(pub))
        for field, got in expected.items():
            if field in c:
                out.eq(f"chat.{field}", got, c[field])
        self._names(pub, c, "chat.", out)
        for field in ("public_key_uncompressed", "public_key_compressed", "compressed_key_zQ3",
                      "share_url_with_chat_key"):
            if field in c:
                out.eq(f"chat.{field} parsed", parse_peer_identity(c[field]).hex(), pub.hex())

    def _names(self, pub: bytes, c: dict[str, Any], prefix: str, out: _Out) -> None:
        if "alias" in c:
            out.eq(f"{prefix}alias", names.alias(pub), c["alias"])
        if "emoji_hash" in c:
            out.eq(f"{prefix}emoji_hash", names.emoji_hash(pub), c["emoji_hash"])
        if "color_hash" in c:
            out.eq(f"{prefix}color_hash", names.color_hash(pub), c["color_hash"])
        if "color_id" in c:
            out.eq(f"{prefix}color_id", names.color_id(pub), c["color_id"])

    # -- upstream -----------------------------------------------------------------------------------
    def upstream(self, e: dict[str, Any], out: _Out) -> None:  # noqa: C901 - one branch per shape
        if isinstance(e.get("mnemonic"), str):
            seed = phrase_to_seed(e["mnemonic"], e.get("bip39_passphrase", ""))
            master = master_key(seed)
            try:
                if "extendedMasterKey" in e:
                    out.eq("extendedMasterKey", master.xprv(), e["extendedMasterKey"])
                for path, d in e.items():
                    if path.startswith("m/") and isinstance(d, dict):
                        self._path(master, path, path, d, out)
            finally:
                master.wipe()
                seed[:] = bytes(len(seed))
        elif "key_uid" in e and "public_key" in e:
            out.eq("key_uid", key_uid(_hex(e["public_key"])), e["key_uid"])
        elif isinstance(e.get("cases"), list):
            for i, case in enumerate(e["cases"]):
                pub = secp256k1.compress(_hex(case["public_key"]))
                if "zQ3" in case:
                    out.eq(f"cases[{i}].zQ3", zq3_encode(pub), case["zQ3"])
                    out.eq(f"cases[{i}].zQ3 decoded", zq3_decode(case["zQ3"]).hex(), pub.hex())
                if "multibase_hex" in case:
                    out.eq(f"cases[{i}].multibase_hex", "f" + (b"\xe7\x01" + pub).hex(), case["multibase_hex"])
        elif "fragment_public_key" in e:
            pub = secp256k1.compress(_hex(e["fragment_public_key"]))
            for field in ("user_url_with_chat_key", "user_url_with_data"):
                if field in e:
                    out.eq(f"{field} key", parse_share_link(e[field]).hex(), pub.hex())
            if "user_url_with_chat_key" in e:
                out.eq("user_url_with_chat_key built", share_link(pub), e["user_url_with_chat_key"])
        elif "public_key" in e and _NAME_FIELDS & set(e):
            self._names(_hex(e["public_key"]), e, "", out)
        if "seed_42" in e:
            out.eq("seed_42", names.alias_from_seed(42), e["seed_42"])
        # any other shape compares nothing and is reported skipped


def _partitioned(pub: bytes) -> dict[str, str]:
    """Partitioned 1:1 topic of the chat key, from the Waku layer's own helpers (not duplicated here)."""
    return {
        "partitioned_chat_id": topics.partitioned_name(pub),
        "partitioned_content_topic": topics.partitioned_topic(pub),
    }


_NAME_FIELDS = frozenset({"alias", "emoji_hash", "color_hash", "color_id"})
_PATH_TEXT = re.compile(r"m(/[0-9]+['hH]?)*", re.ASCII)


def _node_check(node: object) -> Callable[[_Replayer, _Out], None] | None:
    """The check for one JSON node of this schema, or None when the node is not ours (shape only)."""
    if not isinstance(node, dict):
        return None
    if isinstance(node.get("mnemonic"), str):
        if any(k in node for k in ("seed", "master_xprv", "master_public_key", "key_uid", "master_address",
                                   "derived", "chat")):
            return lambda rep, out: rep.identity(node, out)
        if "extendedMasterKey" in node or any(k.startswith("m/") for k in node):
            return lambda rep, out: rep.upstream(node, out)
        return None
    if "key_uid" in node and "public_key" in node:
        return lambda rep, out: rep.upstream(node, out)
    cases = node.get("cases")
    if isinstance(cases, list) and cases and all(isinstance(c, dict) and "zQ3" in c for c in cases):
        return lambda rep, out: rep.upstream(node, out)
    if "fragment_public_key" in node and any(k.startswith("user_url") for k in node):
        return lambda rep, out: rep.upstream(node, out)
    if isinstance(node.get("public_key"), str) and (_NAME_FIELDS | {"seed_42"}) & set(node):
        return lambda rep, out: rep.upstream(node, out)
    if node and set(node) & set(PATHS) and all(
        isinstance(v, str) and _PATH_TEXT.fullmatch(v) for v in node.values()
    ):

        def check_paths(rep: _Replayer, out: _Out) -> None:
            for name, path in node.items():
                if name in PATHS:
                    out.eq(f"paths.{name}", path, PATHS[name])

        return check_paths
    return None


def node_cases(node: object, where: str) -> list[tuple[str, Callable[[], list[str]]]] | None:
    """Cases for the conformance registry's tree walk: ``(name, run)`` with ``run() -> failure lines``.

    Claims one identity, one upstream vector or one path table at a time, so a file mixing schemas works.
    """
    check = _node_check(node)
    if check is None:
        return None

    def run() -> list[str]:
        rep = _Replayer()
        rep.run(where or "document", lambda out: check(rep, out))
        if rep.skipped:  # claimed but nothing keyagent implements was compared: never a silent pass
            return ["no field keyagent implements was compared"]
        return [line.split(": ", 1)[1] for line in rep.failures]

    return [(where or "document", run)]


@register
def status_identity(node: object, where: str) -> list[Case] | None:
    """Registry recogniser for ``keyagent vectors replay``: one case per identity / upstream vector / path table."""
    cases = node_cases(node, where)
    return None if cases is None else [Case(name, run) for name, run in cases]


def replay_identity(doc: dict[str, Any]) -> tuple[int, list[str]]:
    """Replay every identity, upstream vector and path of a status_identity-schema document.

    Returns (number of cases passed, failure lines ``"<case>: <field> ..."``). Cases that compare no
    field keyagent implements (alias, emoji hash, colour hash) count neither as passed nor as failed.
    """
    passed, failures, _ = replay_identity_detail(doc)
    return passed, failures


def replay_identity_detail(doc: dict[str, Any]) -> tuple[int, list[str], list[str]]:
    """Like :func:`replay_identity`, also returning the names of the skipped cases."""
    if not recognise(doc):
        return 0, ["document: not in the status_identity schema (identities with mnemonic, or upstream + paths)"], []
    rep = _Replayer()
    paths = doc.get("paths")
    if isinstance(paths, dict):

        def check_paths(out: _Out) -> None:
            for name, path in paths.items():
                if name in PATHS:
                    out.eq(f"paths.{name}", path, PATHS[name])

        rep.run("paths", check_paths)
    for name, entry in (doc.get("upstream") or {}).items():
        if isinstance(entry, dict):
            rep.run(f"upstream.{name}", functools.partial(rep.upstream, entry))
    for name, entry in (doc.get("identities") or {}).items():
        rep.run(f"identities.{name}", functools.partial(rep.identity, entry))
    return rep.passed, rep.failures, rep.skipped
