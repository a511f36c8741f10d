"""Recogniser for Double Ratchet conversations (``scenarios[]`` items or a single ``conversation``).

Replays every event through :class:`agent.core.ratchet.Ratchet` with the recorded key generations and
compares headers, ciphertexts, plaintexts, errors, primitive traces and the full state after each event.
For the secp256k1 (status-go) profile, Bob's initial ratchet key is given to the ratchet as a KeyOps
(``own_priv=None``), exactly as the daemon does with a token-held signed prekey.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.core import drcrypto
from agent.core.errors import DecryptFailed, MessageKeyGone, ProtocolError, TooManySkipped
from agent.core.keys import public_from_secret
from agent.core.ratchet import Header, Profile, Ratchet, profile_by_name
from backends.memory import MemoryKey

from .common import Diff, has, hx
from .registry import Case, register


class _ScriptedKeys:
    """Hands out the recorded ``generated_keys[party]`` in order instead of drawing randomness."""

    def __init__(self, party: str, keys: list[dict[str, Any]]) -> None:
        self.party = party
        self.keys = keys
        self.next = 0
        self.handed: list[dict[str, Any]] = []

    def __call__(self) -> tuple[bytes, bytes]:
        if self.next >= len(self.keys):
            raise RuntimeError(f"{self.party} needs more ratchet keys than generated_keys holds")
        k = self.keys[self.next]
        self.next += 1
        self.handed.append(k)
        return hx(k["priv"]), hx(k["pub"])


def _pub_of(profile: Profile, priv: bytes) -> bytes:
    if profile.curve == "secp256k1":
        return public_from_secret(priv)
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def _error_class(text: str) -> type[ProtocolError]:
    if "too many messages" in text:
        return TooManySkipped
    if "bad until" in text:
        return MessageKeyGone
    if "invalid signature" in text or "decrypt" in text:
        return DecryptFailed
    return ProtocolError


def _cmp_state(d: Diff, where: str, want: dict[str, Any], got: dict[str, Any]) -> None:
    for k, v in want.items():
        if k == "stored_message_keys":
            continue
        if k not in got:
            d.fail(f"{where}.{k}", "not a state field of this implementation")
            continue
        gv = got[k]
        if isinstance(v, str):
            d.eq(f"{where}.{k}", v, bytes.fromhex(gv) if isinstance(gv, str) else gv)
        else:
            d.eq(f"{where}.{k}", v, gv)
    if "stored_message_keys" in want:
        use_seq = all("seq" in x for x in want["stored_message_keys"])
        fields = ("dh", "n", "mk", "seq") if use_seq else ("dh", "n", "mk")
        w = sorted(tuple(x[f] for f in fields) for x in want["stored_message_keys"])
        g = sorted(tuple(x[f] for f in fields) for x in got["stored_message_keys"])
        if w != g:
            missing = [x for x in w if x not in g][:3]
            extra = [x for x in g if x not in w][:3]
            d.fail(f"{where}.stored_message_keys", f"differ: missing {missing}, unexpected {extra}")


def _cmp_trace(d: Diff, where: str, want: list[dict[str, Any]], got: list[dict[str, Any]], failed: bool) -> None:
    if failed and want and want[-1].get("fn") == "Decrypt" and (not got or got[-1].get("fn") != "Decrypt"):
        want = want[:-1]  # a failing Decrypt call is recorded upstream; ours raises before tracing
    if len(want) != len(got):
        d.fail(f"{where}.trace", f"expected {[t.get('fn') for t in want]}, got {[t.get('fn') for t in got]}")
        return
    for i, (w, g) in enumerate(zip(want, got)):
        for k, v in w.items():
            d.eq(f"{where}.trace[{i}].{k}", v, g.get(k))


def _replay(sc: dict[str, Any]) -> list[str]:
    d = Diff()
    crypto = str(sc.get("crypto", "EthereumCrypto"))
    base = profile_by_name(crypto)
    opts = sc.get("options") or {}
    profile = base.with_limits(int(opts.get("MaxSkip", base.max_skip)), int(opts.get("MaxKeep", base.max_keep)),
                               int(opts.get("MaxMessageKeysPerSession", base.max_keys_per_session)))
    sk = hx(sc["shared_key"])
    bob_kp = sc["bob_initial_ratchet_keypair"]
    bob_priv, bob_pub = hx(bob_kp["priv"]), hx(bob_kp["pub"])
    d.eq("bob_initial_ratchet_keypair.pub", bob_kp["pub"], _pub_of(profile, bob_priv))
    gen = sc.get("generated_keys") or {}
    keys = {p: _ScriptedKeys(p, list(gen.get(p) or [])) for p in ("alice", "bob")}
    for p, ks in keys.items():
        for i, k in enumerate(ks.keys):
            d.eq(f"generated_keys.{p}[{i}].pub", k["pub"], _pub_of(profile, hx(k["priv"])))
            if "seq" in k:
                d.eq(f"generated_keys.{p}[{i}].seq", i, k["seq"])
    spk = MemoryKey(bob_priv) if profile.curve == "secp256k1" else None
    parties: dict[str, Ratchet] = {}
    messages = {m["id"]: m for m in sc.get("messages", [])}
    sent: set[Any] = set()
    trace: list[dict[str, Any]] = []

    def tracer(fn: str, fields: dict[str, Any]) -> None:
        entry = {"fn": fn, **fields}
        if fn == "GenerateDH":
            for ks in keys.values():
                if ks.handed and ks.handed[-1]["pub"] == fields["pub"]:
                    entry["seq"] = ks.next - 1
        trace.append(entry)

    for idx, ev in enumerate(sc.get("events", [])):
        op, party = ev.get("op"), ev.get("party")
        where = f"event {ev.get('index', idx)} ({op} {party})"
        if "index" in ev:
            d.eq(f"{where}.index", idx, ev["index"])
        trace.clear()
        handed_before = len(keys[party].handed) if party in keys else 0
        failed = False
        if op == "init":
            if party == "alice":
                parties["alice"] = Ratchet.initiator(profile, sk, bob_pub, keygen=keys["alice"], tracer=tracer)
            elif party == "bob":
                parties["bob"] = Ratchet.responder(profile, sk, bob_pub, None if spk else bob_priv,
                                                   keygen=keys["bob"], tracer=tracer)
            else:
                d.fail(where, f"unknown party {party!r}")
                return d.problems
        elif party not in parties:
            d.fail(where, "party used before init")
            return d.problems
        elif op == "send":
            r = parties[party]
            if ev.get("message") not in messages:
                d.fail(f"{where}.message", f"unknown message id {ev.get('message')!r}")
                continue
            m = messages[ev["message"]]
            sent.add(ev["message"])
            d.eq(f"{where}.sender", m.get("sender", party), party)
            header, ct = r.encrypt(hx(m["plaintext"]), hx(m.get("ad")))
            h = m["header"]
            d.eq(f"{where}.header.dh", h["dh"], header.dh)
            d.eq(f"{where}.header.n", h["n"], header.n)
            d.eq(f"{where}.header.pn", h["pn"], header.pn)
            d.opt(m, "header_encoded", header.encode(), f"{where}.message.")
            d.opt(m, "mac_ad", hx(m.get("ad")) + header.encode(), f"{where}.message.")
            d.eq(f"{where}.ciphertext", m["ciphertext"], ct)
            parts = m.get("ciphertext_parts")
            if isinstance(parts, dict):
                d.opt(parts, "iv", ct[:16], f"{where}.ciphertext_parts.")
                d.opt(parts, "body", ct[16:-32], f"{where}.ciphertext_parts.")
                d.opt(parts, "mac", ct[-32:], f"{where}.ciphertext_parts.")
            mk = next((bytes.fromhex(t["mk"]) for t in trace if t["fn"] == "KdfCK"), b"")
            d.opt(m, "message_key", mk, f"{where}.message.")
            enc, auth, _ = drcrypto.expand_message_key(mk)
            d.opt(m, "enc_key", enc, f"{where}.message.")
            d.opt(m, "auth_key", auth, f"{where}.message.")
        elif op == "recv":
            r = parties[party]
            dl = ev["delivered"]
            h = dl["header"]
            header = Header(hx(h["dh"]), int(h["n"]), int(h["pn"]))
            if "message" in ev and ev["message"] not in messages:
                d.fail(f"{where}.message", f"unknown message id {ev['message']!r}")
            if ev.get("tamper") is None and ev.get("message") in messages:
                m = messages[ev["message"]]
                d.eq(f"{where}.delivered.header", m["header"], h)
                d.eq(f"{where}.delivered.ciphertext", m["ciphertext"], hx(dl["ciphertext"]))
                d.eq(f"{where}.delivered.ad", m.get("ad", ""), dl.get("ad", ""))
            if "key_found_in_store" in ev:
                d.eq(f"{where}.key_found_in_store", ev["key_found_in_store"], r.has_message_key(header.dh, header.n))
            before = r.to_bytes()
            try:
                pt = r.decrypt(header, hx(dl["ciphertext"]), hx(dl.get("ad")), spk=spk if party == "bob" else None)
                err: ProtocolError | None = None
            except ProtocolError as exc:
                pt, err, failed = b"", exc, True
            if ev.get("result") == "ok":
                if err is not None:
                    d.fail(f"{where}.result", f"expected ok, got {type(err).__name__}: {err}")
                else:
                    d.opt(ev, "plaintext", pt, f"{where}.")
                    used = next((t["mk"] for t in reversed(trace) if t["fn"] == "Decrypt"), "")
                    d.opt(ev, "message_key", bytes.fromhex(used), f"{where}.")
            else:
                text = str(ev.get("error", ""))
                if err is None:
                    d.fail(f"{where}.result", f"expected error {text!r}, but it decrypted")
                elif not isinstance(err, _error_class(text)):
                    d.fail(f"{where}.error", f"expected {text!r}, got {type(err).__name__}: {err}")
                if "state_unchanged" in ev:  # always true upstream: a failed decrypt changes nothing
                    d.eq(f"{where}.state_unchanged", ev["state_unchanged"], r.to_bytes() == before)
                elif r.to_bytes() != before:
                    d.fail(f"{where}.state_unchanged", "state changed by a failed decrypt")
        elif op in ("delete_mk", "delete", "confirm"):
            r = parties[party]
            src = ev.get("header") or ev
            if not any(k in src for k in ("dh", "key")) and ev.get("message") in messages:
                src = messages[ev["message"]]["header"]
            dh = src.get("dh", src.get("key"))
            n = src.get("n", src.get("msg_num", src.get("nr")))
            if dh is None or n is None:
                d.fail(where, "delete_mk without dh and n")
                continue
            r.delete_message_key(hx(dh), int(n))
        else:
            d.fail(where, f"unknown op {op!r}")
            continue
        # the key pairs generated during this event
        if party in keys and "generated_keys" in ev:
            got = keys[party].handed[handed_before:]
            d.eq(f"{where}.generated_keys", [k.get("pub") for k in ev["generated_keys"]], [k["pub"] for k in got])
            for k, g in zip(ev["generated_keys"], got):
                d.eq(f"{where}.generated_keys.priv", k.get("priv"), g["priv"])
                for f in ("seq", "event"):
                    if f in k:
                        d.eq(f"{where}.generated_keys.{f}", g.get(f), k[f])
        if party in keys:
            for g in keys[party].handed[handed_before:]:
                if "event" in g:  # the key was recorded as generated in exactly this event
                    d.eq(f"{where}: generated_keys.{party}[seq {g.get('seq')}].event", idx, g["event"])
        if "trace" in ev:  # null means "no primitive calls"
            _cmp_trace(d, where, ev.get("trace") or [], trace, failed)
        if "state_after" in ev and party in parties:
            state = parties[party].debug_state()
            if state["dhs_priv"] is None and spk is not None and state["dhs_pub"] == spk.public_key().hex():
                state["dhs_priv"] = bob_priv.hex()  # the token-held SPK (KeyOps) is the current ratchet key
            _cmp_state(d, f"{where}.state_after", ev["state_after"], state)
    for mid in messages:
        if mid not in sent:
            d.fail(f"message {mid}", "never sent by any event (its recorded values are unchecked)")
    return d.problems


def _is_conversation(node: Any) -> bool:
    return has(node, "events", "messages", "shared_key", "bob_initial_ratchet_keypair")


@register
def dr_conversations(node: Any, where: str) -> list[Case] | None:
    """A conversation object (as a ``scenarios[]`` item, a ``conversation`` value, or the whole file)."""
    if _is_conversation(node):
        return [Case(f"{where or 'conversation'} {node.get('name', '')}".rstrip(), lambda: _replay(node))]
    return None
