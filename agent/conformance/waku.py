"""Replay files in the schema of ``waku_payload.json`` (26/WAKU2-PAYLOAD vectors), recognised by shape.

A file is ours when it has a ``keys`` object and a ``vectors`` (or ``negatives``) list whose entries carry a
``mode`` of ``asymmetric``/``symmetric`` and a hex ``wire``. Everything else in an entry is optional and
checked when present, so minimal files (go-waku wires: ``mode``, ``signed``, ``payload``, ``wire``) replay too:

* vectors: decrypt with the recipient key / symmetric key, match the envelope, payload, signed flag and the
  recovered signer; match every recorded intermediate (ECIES shared x, KDF output, keys, MAC; GCM nonce, tag);
  when the RNG draws are recorded, re-seal with them (and the signer's RFC 6979 signature) and match the wire.
* negatives: reject at the stage ``expect`` names (``mac_mismatch``/``gcm_tag_mismatch`` → DecryptFailed,
  ``invalid_ephemeral_key`` → BadEphemeralKey with **no** ECDH attempted, ``too_short`` → WireTooShort), or
  for ``decrypts; …`` decrypt and then never attribute the message to the signer.
* ``status.negotiated`` / ``status.partitioned``: key, topic and content-topic derivations.

Each case yields a pass or failure lines ``"<case>: <field> ..."``; no exception escapes for bad data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from agent.conformance.registry import Case, register
from agent.core import secp256k1
from agent.core.hashing import keccak256
from agent.core.errors import (
    BadEphemeralKey,
    DecryptFailed,
    ProtocolError,
    WireTooShort,
)
from agent.core.waku import ecies, envelope, payload, symmetric, topics
from backends.memory import MemoryKey

__all__ = ["recognise", "cases", "replay_waku", "waku_payload"]

_MODES = ("asymmetric", "symmetric")


def _is_case(entry: object) -> bool:
    return isinstance(entry, dict) and entry.get("mode") in _MODES and isinstance(entry.get("wire"), str)


def recognise(doc: object) -> bool:
    """True for a document in the waku_payload.json schema (by shape, not by name)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
        return False
    cases = [e for k in ("vectors", "negatives") if isinstance(doc.get(k), list) for e in doc[k]]
    return bool(cases) and all(_is_case(e) for e in cases)


class _CountingKey:
    """A MemoryKey that counts ECDH calls, to prove cheap rejections spend no token operation."""

    def __init__(self, secret: bytes) -> None:
        self._key = MemoryKey(secret)
        self.dh_calls = 0

    def public_key(self) -> bytes:
        return self._key.public_key()

    def sign(self, digest: bytes) -> bytes:
        return self._key.sign(digest)

    def dh(self, peer_public: bytes) -> bytes:
        self.dh_calls += 1
        return self._key.dh(peer_public)


class _Replayer:
    """Per-document state: its keys and the failure lines collected so far."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.keys: dict[str, Any] = doc.get("keys") or {}
        self.vectors: dict[str, dict[str, Any]] = {
            str(v.get("id")): v for v in doc.get("vectors") or [] if isinstance(v, dict)
        }

    # -- helpers ---------------------------------------------------------------------------------------------
    def _hex(self, entry: dict[str, Any], name: str) -> bytes | None:
        """Field ``name`` from the entry, else from ``keys``; None when absent."""
        value = entry.get(name, self.keys.get(name))
        if value is None:
            return None
        if not isinstance(value, str):
            raise _CaseError(f"{name} is not a hex string")
        try:
            return bytes.fromhex(value[2:] if value.startswith("0x") else value)
        except ValueError:
            raise _CaseError(f"{name} is not valid hex") from None

    def _need(self, entry: dict[str, Any], name: str) -> bytes:
        value = self._hex(entry, name)
        if value is None:
            raise _CaseError(f"{name} missing")
        return value

    def _signer_of(self, entry: dict[str, Any]) -> bytes | None:
        return self._hex(entry, "signer_pub")

    def check(self, fn: Callable[[list[str]], None]) -> list[str]:
        """Run one case's check; return its failure lines (a crash on vector data is a failure line)."""
        lines: list[str] = []
        try:
            fn(lines)
        except _CaseError as exc:
            lines.append(str(exc))
        except Exception as exc:  # never a crashed replay
            lines.append(f"unexpected {type(exc).__name__}: {exc}")
        return lines

    # -- vectors ---------------------------------------------------------------------------------------------
    def vector(self, v: dict[str, Any], out: list[str]) -> None:
        wire = self._need(v, "wire")
        mode = v["mode"]
        key: _CountingKey | None = None
        try:
            if mode == "asymmetric":
                key = _CountingKey(self._need(v, "recipient_priv"))
                env = ecies.open_asymmetric(wire, key)
            else:
                env = symmetric.open_symmetric(wire, self._need(v, "sym_key"))
        except ProtocolError as exc:
            out.append(f"wire: rejected with {type(exc).__name__}: {exc}")
            return
        _eq(out, "plaintext_envelope", env, self._hex(v, "plaintext_envelope"))
        try:
            opened = envelope.decode_envelope(env)
        except ProtocolError as exc:
            out.append(f"envelope: rejected with {type(exc).__name__}: {exc}")
            return
        _eq(out, "payload", opened.payload, self._hex(v, "payload"))
        for name, got in (
            ("payload_len", len(opened.payload)),
            ("plaintext_envelope_len", len(env)),
            ("wire_len", len(wire)),
        ):
            if name in v and v[name] != got:
                out.append(f"{name} {got} != {v[name]}")
        signed = _truthy(v.get("signed")) if "signed" in v else None
        if signed is not None and signed != opened.signed:
            out.append(f"signed {opened.signed} != {signed}")
        signer = self._signer_of(v)
        if opened.signed and signer is not None and opened.signer_pub != secp256k1.decompress(signer):
            out.append("signer recovered key != signer_pub")
        details = v.get("envelope")
        if isinstance(details, dict):
            self._envelope_details(details, env, opened, out)
        if mode == "asymmetric" and isinstance(v.get("ecies"), dict):
            assert key is not None
            self._ecies_details(v["ecies"], wire, key, out)
        if mode == "symmetric" and isinstance(v.get("gcm"), dict):
            g = v["gcm"]
            _eq(out, "gcm.iv", wire[-symmetric.NONCE_LEN :], _opt_hex(g.get("iv")))
            _eq(out, "gcm.tag", wire[-symmetric.OVERHEAD : -symmetric.NONCE_LEN], _opt_hex(g.get("tag")))
            _eq(out, "gcm.ciphertext", wire[: -symmetric.OVERHEAD], _opt_hex(g.get("ciphertext")))
        self._reseal(v, opened, wire, out)

    def _envelope_details(
        self, d: dict[str, Any], env: bytes, opened: envelope.Opened, out: list[str]
    ) -> None:
        n = env[0] & envelope.SIZE_MASK
        if "flags" in d and d["flags"] != env[0]:
            out.append(f"envelope.flags {env[0]} != {d['flags']}")
        if "size_field_len" in d and d["size_field_len"] != n:
            out.append(f"envelope.size_field_len {n} != {d['size_field_len']}")
        _eq(out, "envelope.size_field", env[1 : 1 + n], _opt_hex(d.get("size_field")))
        _eq(out, "envelope.padding", opened.padding, _opt_hex(d.get("padding")))
        if "padding_len" in d and d["padding_len"] != len(opened.padding):
            out.append(f"envelope.padding_len {len(opened.padding)} != {d['padding_len']}")
        if opened.signature is not None:
            digest = keccak256(env[: -envelope.SIGNATURE_LEN])
            _eq(out, "envelope.signed_data_keccak256", digest, _opt_hex(d.get("signed_data_keccak256")))
            _eq(out, "envelope.signature", opened.signature, _opt_hex(d.get("signature")))

    def _ecies_details(self, e: dict[str, Any], wire: bytes, key: _CountingKey, out: list[str]) -> None:
        r = wire[: ecies.R_LEN]
        _eq(out, "ecies.ephemeral_pub", r, _opt_hex(e.get("ephemeral_pub")))
        _eq(out, "ecies.iv", wire[ecies.R_LEN : ecies.R_LEN + ecies.IV_LEN], _opt_hex(e.get("iv")))
        _eq(out, "ecies.ciphertext", wire[ecies.R_LEN + ecies.IV_LEN : -ecies.TAG_LEN], _opt_hex(e.get("ciphertext")))
        _eq(out, "ecies.mac", wire[-ecies.TAG_LEN :], _opt_hex(e.get("mac")))
        shared = key.dh(r)
        _eq(out, "ecies.shared_x", shared, _opt_hex(e.get("shared_x")))
        keys = ecies.kdf(shared)
        _eq(out, "ecies.kdf_out", keys.kdf_out, _opt_hex(e.get("kdf_out")))
        _eq(out, "ecies.ke", keys.ke, _opt_hex(e.get("ke")))
        _eq(out, "ecies.km", keys.kdf_out[16:], _opt_hex(e.get("km")))
        _eq(out, "ecies.mac_key", keys.km, _opt_hex(e.get("mac_key")))
        eph = _opt_hex(e.get("ephemeral_priv"))
        if eph is not None:
            _eq(out, "ecies.ephemeral_priv (its public key)", MemoryKey(eph).public_key(), secp256k1.compress(r))

    def _reseal(self, v: dict[str, Any], opened: envelope.Opened, wire: bytes, out: list[str]) -> None:
        """Re-seal with the recorded draws and the signer's deterministic signature; match the wire."""
        draws = v.get("random_draws")
        if not isinstance(draws, dict):
            return
        stream = [bytes.fromhex(x) for k in ("padding", "encryption") for x in draws.get(k) or []]
        signer: MemoryKey | None = None
        if opened.signed:
            priv = self._hex(v, "signer_priv")
            if priv is None:
                return  # signed, but nobody can re-sign without the key: decryption checks suffice
            signer = MemoryKey(priv)

        def rng(n: int) -> bytes:
            if not stream:
                raise _CaseError(f"random_draws exhausted (wanted {n} bytes)")
            chunk = stream.pop(0)
            if len(chunk) != n:
                raise _CaseError(f"random_draws: recorded {len(chunk)} bytes where {n} were drawn")
            return chunk

        if v["mode"] == "asymmetric":
            to = self._hex(v, "recipient_pub") or MemoryKey(self._need(v, "recipient_priv")).public_key()
            again = payload.seal(opened.payload, to=to, signer=signer, rng=rng)
        else:
            again = payload.seal(opened.payload, sym_key=self._need(v, "sym_key"), signer=signer, rng=rng)
        if again != wire:
            out.append("wire: re-sealing with the recorded random draws gives different bytes")

    # -- negatives -------------------------------------------------------------------------------------------
    def negative(self, n: dict[str, Any], out: list[str]) -> None:
        wire = self._need(n, "wire")
        expect = str(n.get("expect", ""))
        key: _CountingKey | None = None
        sym_key: bytes | None = None
        if n["mode"] == "asymmetric":
            key = _CountingKey(self._need(n, "recipient_priv"))
        else:
            sym_key = self._hex(n, "wrong_sym_key") if "wrong_sym_key" in n else self._need(n, "sym_key")

        def attempt() -> bytes:
            if key is not None:
                return ecies.open_asymmetric(wire, key)
            assert sym_key is not None
            return symmetric.open_symmetric(wire, sym_key)

        if expect.startswith("decrypts"):
            try:
                env = attempt()
            except ProtocolError as exc:
                out.append(f"expected to decrypt, rejected with {type(exc).__name__}: {exc}")
                return
            _eq(out, "plaintext_envelope", env, self._hex(n, "plaintext_envelope"))
            try:
                opened = envelope.decode_envelope(env)
            except ProtocolError:
                return  # rejected at the parse or signature stage: fine
            signer = self._expected_signer(n)
            if opened.signed and signer is not None and opened.signer_pub == secp256k1.decompress(signer):
                out.append("accepted as signed by the signer")
            elif opened.signed and signer is None:
                out.append("decoded as signed, and no signer_pub to compare with")
            return
        wanted = _stage(expect)
        if wanted is None:
            out.append(f"expect: unknown expectation {expect!r}")
            return
        cls, no_dh = wanted
        try:
            attempt()
        except cls:
            pass
        except ProtocolError as exc:
            out.append(f"rejected with {type(exc).__name__}, expected {cls.__name__} ({expect})")
            return
        else:
            out.append(f"accepted, expected {cls.__name__} ({expect})")
            return
        if no_dh and key is not None and key.dh_calls:
            out.append("an ECDH was spent before the cheap rejection")
        # a message for another recipient opens with that recipient's key
        if n["mode"] == "asymmetric" and "other_recipient_pub" in n:
            other_priv = self._hex(n, "other_recipient_priv")
            other_pub = secp256k1.compress(self._need(n, "other_recipient_pub"))
            if other_priv is not None and MemoryKey(other_priv).public_key() == other_pub:
                envelope.decode_envelope(ecies.open_asymmetric(wire, MemoryKey(other_priv)))

    def _expected_signer(self, n: dict[str, Any]) -> bytes | None:
        base = self.vectors.get(str(n.get("base")))
        if base is not None:
            own = self._signer_of(base)
            if own is not None:
                return own
        return self._signer_of(n)

    # -- status derivations ----------------------------------------------------------------------------------
    def negotiated(self, s: dict[str, Any], out: list[str]) -> None:
        a = MemoryKey(self._need(s, "a_priv"))
        secret = topics.negotiated_secret(a, self._need(s, "b_pub"))
        _eq(out, "shared_x", secret, self._hex(s, "shared_x"))
        sym = topics.negotiated_key(secret)
        _eq(out, "sym_key", sym, _opt_hex(s.get("sym_key")))
        _eq(out, "topic", topics.topic_bytes(topics.negotiated_name(secret)), _opt_hex(s.get("topic")))
        if "content_topic" in s and s["content_topic"] != topics.negotiated_topic(secret):
            out.append(f"content_topic {topics.negotiated_topic(secret)} != {s['content_topic']}")
        ex = s.get("example")
        if isinstance(ex, dict) and "wire" in ex:
            env = symmetric.open_symmetric(self._need(ex, "wire"), sym)
            _eq(out, "example.plaintext_envelope", env, _opt_hex(ex.get("plaintext_envelope")))
            opened = envelope.decode_envelope(env)
            _eq(out, "example.payload", opened.payload, _opt_hex(ex.get("payload")))
            want = _opt_hex(ex.get("signer_pub"))
            if want is not None and opened.signer_pub != secp256k1.decompress(want):
                out.append("example.signer_pub: recovered signer differs")

    def partitioned(self, s: dict[str, Any], out: list[str]) -> None:
        pub = self._need(s, "recipient_pub")
        name = topics.partitioned_name(pub)
        if "topic_string" in s and s["topic_string"] != name:
            out.append(f"topic_string {name} != {s['topic_string']}")
        _eq(out, "topic", topics.topic_bytes(name), _opt_hex(s.get("topic")))
        if "content_topic" in s and s["content_topic"] != topics.partitioned_topic(pub):
            out.append(f"content_topic {topics.partitioned_topic(pub)} != {s['content_topic']}")


def _stage(expect: str) -> tuple[type[Exception], bool] | None:
    """The error a rejection stage names, and whether it must come before any ECDH.

    The file's labels are ``mac_mismatch``, ``gcm_tag_mismatch``, ``invalid_ephemeral_key`` and ``too_short``;
    close variants (``invalid_mac``, ``truncated``, ``bad_ephemeral_key``...) map to the same stages.
    """
    e = expect.lower()
    if "mac" in e or "tag" in e or "auth" in e:
        return DecryptFailed, False
    if "ephemeral" in e or "curve" in e or "prefix" in e:
        return BadEphemeralKey, True
    if "short" in e or "truncat" in e:
        return WireTooShort, True
    return None


class _CaseError(Exception):
    """Data missing or unusable in a case: a failure line, not a crash."""


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _opt_hex(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _CaseError(f"expected a hex string, got {type(value).__name__}")
    try:
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    except ValueError:
        raise _CaseError("invalid hex") from None


def _eq(out: list[str], field: str, got: bytes, want: bytes | None) -> None:
    if want is not None and got != want:
        out.append(f"{field} {got.hex()[:64]}… != {want.hex()[:64]}…")


def cases(doc: dict[str, Any], where: str = "") -> list[Case]:
    """One :class:`Case` per vector, negative and status derivation of a recognised document."""
    rep = _Replayer(doc)
    prefix = f"{where}." if where else ""
    out: list[Case] = []

    def case(name: str, fn: Callable[[list[str]], None]) -> None:
        out.append(Case(prefix + name, functools.partial(rep.check, fn)))

    for i, v in enumerate(doc.get("vectors") or []):
        case(str(v.get("id", f"vectors[{i}]")), functools.partial(rep.vector, v))
    for i, n in enumerate(doc.get("negatives") or []):
        case(str(n.get("id", f"negatives[{i}]")), functools.partial(rep.negative, n))
    status = doc.get("status")
    if isinstance(status, dict):
        if isinstance(status.get("negotiated"), dict):
            case("status.negotiated", functools.partial(rep.negotiated, status["negotiated"]))
        if isinstance(status.get("partitioned"), dict):
            case("status.partitioned", functools.partial(rep.partitioned, status["partitioned"]))
    return out


@register
def waku_payload(node: object, where: str) -> list[Case] | None:
    """Registry hook: claim a waku_payload-schema document wherever it sits in the JSON tree."""
    if not recognise(node):
        return None
    assert isinstance(node, dict)
    return cases(node, where)


def replay_waku(doc: dict[str, Any]) -> tuple[int, list[str]]:
    """Replay every vector, negative and status derivation of a waku_payload-schema document.

    Returns (number of cases passed, failure lines ``"<case>: <field> ..."``).
    """
    if not recognise(doc):
        return 0, ["document: not in the waku_payload schema (keys + vectors/negatives with mode and wire)"]
    passed, failures = 0, []
    for c in cases(doc):
        lines = c.run()
        if lines:
            failures += [f"{c.name}: {line}" for line in lines]
        else:
            passed += 1
    return passed, failures
