"""Differential test: the optimised ratchet (copy-on-write scalars, staged keys, ordered store) against a
naive transcription of status-im/doubleratchet (deep copy per decrypt, Go's sort-based pruning), with small
limits so that MaxSkip, MaxKeep and the per-session cap are hit constantly."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import drcrypto
from agent.core.errors import ProtocolError
from agent.core.ratchet import SPEC, STATUS_GO, Header, Profile, Ratchet

from .test_ratchet_properties import counter_keygen

SK = hashlib.sha256(b"model").digest()


class Model:
    """The library's algorithm written plainly (session.go / state.go / keys_storage.go)."""

    def __init__(self, profile: Profile, dhs: tuple[bytes, bytes], dhr: bytes, keygen: Any) -> None:
        self.p, self.keygen = profile, keygen
        self.s: dict[str, Any] = dict(dhs=dhs, dhr=dhr, rk=SK, cks=SK, ns=0, ckr=SK, nr=0, pn=0, kc=0)
        self.keys: dict[tuple[bytes, int], tuple[bytes, int]] = {}

    @classmethod
    def initiator(cls, p: Profile, remote: bytes, keygen: Any) -> "Model":
        m = cls(p, keygen(), remote, keygen)
        m.s["rk"], m.s["cks"], _ = drcrypto.kdf_rk(SK, p.dh(m.s["dhs"][0], remote))
        return m

    def encrypt(self, pt: bytes) -> tuple[Header, bytes]:
        s = self.s
        h = Header(s["dhs"][1], s["ns"], s["pn"])
        s["cks"], mk = drcrypto.kdf_ck(s["cks"])
        s["ns"] += 1
        return h, drcrypto.encrypt(mk, pt, h.encode())

    def _skip(self, sc: dict[str, Any], key: bytes, until: int, out: list[Any]) -> None:
        if until < sc["nr"]:
            raise ProtocolError("bad until")
        if sc["nr"] + self.p.max_skip < until:
            raise ProtocolError("too many")
        while sc["nr"] < until:
            sc["ckr"], mk = drcrypto.kdf_ck(sc["ckr"])
            out.append((key, sc["nr"], mk, sc["kc"]))
            sc["nr"] += 1
            sc["kc"] += 1

    def decrypt(self, h: Header, ct: bytes) -> bytes:
        if (h.dh, h.n) in self.keys:
            return drcrypto.decrypt(self.keys[(h.dh, h.n)][0], ct, h.encode())
        sc = copy.deepcopy(self.s)
        skipped: list[Any] = []
        if h.dh != sc["dhr"]:
            self._skip(sc, sc["dhr"], h.pn, skipped)
            sc["pn"], sc["dhr"] = sc["ns"], h.dh
            sc["rk"], sc["ckr"], _ = drcrypto.kdf_rk(sc["rk"], self.p.dh(sc["dhs"][0], h.dh))
            sc["nr"] = 0
            sc["dhs"] = self.keygen()
            sc["rk"], sc["cks"], _ = drcrypto.kdf_rk(sc["rk"], self.p.dh(sc["dhs"][0], h.dh))
            sc["ns"] = 0
        self._skip(sc, h.dh, h.n, skipped)
        sc["ckr"], mk = drcrypto.kdf_ck(sc["ckr"])
        sc["nr"] += 1
        pt = drcrypto.decrypt(mk, ct, h.encode())
        skipped.append((h.dh, h.n, mk, sc["kc"]))
        sc["kc"] += 1
        self.s = sc
        for key, n, k, seq in skipped:
            self.keys[(key, n)] = (k, seq)
        seqs = sorted(seq for _, seq in self.keys.values())
        if len(seqs) > self.p.max_keys_per_session:
            doomed = set(seqs[: len(seqs) - self.p.max_keys_per_session])
            self.keys = {k: v for k, v in self.keys.items() if v[1] not in doomed}
        if sc["kc"] >= self.p.max_keep:
            self.keys = {k: v for k, v in self.keys.items() if v[1] > sc["kc"] - self.p.max_keep}
        return pt

    def state(self) -> dict[str, Any]:
        s = self.s
        return {"dhs_pub": s["dhs"][1].hex(), "dhr": s["dhr"].hex(), "root_key": s["rk"].hex(),
                "send_ck": s["cks"].hex(), "send_n": s["ns"], "recv_ck": s["ckr"].hex(), "recv_n": s["nr"],
                "pn": s["pn"], "keys_count": s["kc"],
                "stored_message_keys": sorted((k[0].hex(), k[1], v[0].hex(), v[1]) for k, v in self.keys.items())}


def normalise(r: Ratchet) -> dict[str, Any]:
    st_ = r.debug_state()
    st_.pop("dhs_priv")
    st_["stored_message_keys"] = sorted((k["dh"], k["n"], k["mk"], k["seq"]) for k in st_["stored_message_keys"])
    return st_


OPS = st.lists(st.tuples(st.sampled_from(["send", "deliver", "delete"]), st.integers(0, 1), st.integers(0, 999)),
               max_size=60)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([STATUS_GO, SPEC]), st.integers(1, 6), st.integers(1, 8), st.integers(1, 6), OPS)
def test_optimised_ratchet_equals_naive_model(base: Profile, max_skip: int, max_keep: int, per_session: int,
                                              ops: list[tuple[str, int, int]]) -> None:
    p = base.with_limits(max_skip, max_keep, per_session)
    spk_priv, spk_pub = counter_keygen(p, b"spk")()
    real = [Ratchet.initiator(p, SK, spk_pub, keygen=counter_keygen(p, b"a")),
            Ratchet.responder(p, SK, spk_pub, spk_priv, keygen=counter_keygen(p, b"b"))]
    model = [Model.initiator(p, spk_pub, counter_keygen(p, b"a")),
             Model(p, (spk_priv, spk_pub), b"", counter_keygen(p, b"b"))]
    sent: list[tuple[int, Header, bytes, bytes]] = []
    for op, side, pick in ops:
        if op == "send":
            pt = f"m{len(sent)}".encode()
            h1, c1 = real[side].encrypt(pt)
            h2, c2 = model[side].encrypt(pt)
            assert (h1, c1) == (h2, c2)
            sent.append((side, h1, c1, pt))
        elif sent:
            sender, h, c, pt = sent[pick % len(sent)]
            receiver = 1 - sender
            if op == "delete":
                real[receiver].delete_message_key(h.dh, h.n)
                model[receiver].keys.pop((h.dh, h.n), None)
            else:
                outcome: list[bytes | None] = []
                for impl in (real[receiver], model[receiver]):
                    try:
                        outcome.append(impl.decrypt(h, c))
                    except ProtocolError:
                        outcome.append(None)
                assert outcome[0] == outcome[1]
                assert outcome[0] in (None, pt)
        for r, m in zip(real, model):
            assert normalise(r) == m.state()
            # the serialised state (kept keys packed incrementally) is exactly the state, in store order
            assert Ratchet.from_bytes(r.to_bytes()).debug_state() == r.debug_state()
