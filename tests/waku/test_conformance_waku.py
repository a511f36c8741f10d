"""The waku_payload-schema replayer: the shared file replays cleanly, and every kind of breakage is reported
as a failure line for its case (never a crash, never a silent pass)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.conformance.waku import recognise, replay_waku
from agent.core.waku import seal
from backends.memory import MemoryKey
from tests.waku.helpers import h


def _flip(hexstr: str, pos: int) -> str:
    b = bytearray(h(hexstr))
    b[pos] ^= 1
    return b.hex()


def test_shared_file_replays_completely(doc: dict[str, Any]) -> None:
    passed, failures = replay_waku(doc)
    assert failures == []
    assert passed == len(doc["vectors"]) + len(doc["negatives"]) + 2


def test_recognised_by_shape(doc: dict[str, Any]) -> None:
    assert recognise(doc)
    assert not recognise({"vectors": doc["vectors"]})  # no keys
    assert not recognise({"keys": {}, "vectors": []})
    assert not recognise({"keys": {}, "vectors": [{"mode": "hybrid", "wire": "00"}]})
    assert not recognise({"keys": {}, "scenarios": []})
    assert not recognise([doc])
    passed, failures = replay_waku({"keys": {}, "scenarios": []})
    assert passed == 0 and len(failures) == 1


def test_minimal_go_waku_style_file_replays(doc: dict[str, Any]) -> None:
    """Only keys + mode/signed/payload/wire, as the go-waku-made wires are kept."""
    keys = doc["keys"]
    signer = MemoryKey(h(keys["signer_priv"]))
    vectors: list[dict[str, Any]] = []
    for i, (mode, signed, n) in enumerate([("asymmetric", True, 70000), ("symmetric", False, 300), ("asymmetric", False, 0)]):
        payload = bytes(i + j & 0xFF for j in range(n))
        rng = lambda k: bytes([k % 251 + 1]) * k  # noqa: E731 - deterministic, valid scalars
        if mode == "asymmetric":
            wire = seal(payload, to=h(keys["recipient_pub"]), signer=signer if signed else None, rng=rng)
        else:
            wire = seal(payload, sym_key=h(keys["sym_key"]), signer=signer if signed else None, rng=rng)
        vectors.append({"mode": mode, "signed": signed, "payload": payload.hex(), "wire": wire.hex()})
    minimal: dict[str, Any] = {"keys": {k: keys[k] for k in ("recipient_priv", "signer_pub", "sym_key")}, "vectors": vectors}
    assert replay_waku(minimal) == (3, [])
    broken = copy.deepcopy(minimal)
    broken["vectors"][1]["payload"] = "00" + broken["vectors"][1]["payload"][2:]
    passed, failures = replay_waku(broken)
    assert passed == 2 and failures[0].startswith("vectors[1]: payload")


@pytest.mark.parametrize(
    ("path", "expect_field"),
    [(("wire",), "wire: rejected with BadEphemeralKey"), (("payload",), "payload"), (("plaintext_envelope",), "plaintext_envelope"),
     (("envelope", "padding"), "envelope.padding"), (("envelope", "signature"), "envelope.signature"),
     (("ecies", "shared_x"), "ecies.shared_x"), (("ecies", "kdf_out"), "ecies.kdf_out"),
     (("ecies", "mac_key"), "ecies.mac_key"), (("random_draws", "encryption", 1), "wire")],
)  # fmt: skip
def test_tampered_vector_fields_are_reported(doc: dict[str, Any], path: tuple[Any, ...], expect_field: str) -> None:
    d = copy.deepcopy(doc)
    v = next(x for x in d["vectors"] if x["id"] == "asym-signed-254")
    holder: Any = v
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = _flip(holder[path[-1]], 3)
    passed, failures = replay_waku(d)
    assert passed == len(doc["vectors"]) + len(doc["negatives"]) + 2 - 1
    assert len([f for f in failures if f.startswith("asym-signed-254: ")]) >= 1
    assert expect_field in " ".join(failures)


def test_wrong_signer_is_reported(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    d["keys"]["signer_pub"] = d["keys"]["recipient_pub"]
    passed, failures = replay_waku(d)
    signed = [v["id"] for v in doc["vectors"] if v["signed"]]
    for vid in signed:
        assert any(f.startswith(f"{vid}: signer") for f in failures)


def test_a_negative_that_is_actually_valid_fails(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    good = next(v for v in doc["vectors"] if v["id"] == "asym-signed-256")
    for nid in ("neg-asym-ct-bitflip", "neg-asym-sig-s-bitflip", "neg-asym-R-off-curve", "neg-asym-truncated"):
        neg = next(n for n in d["negatives"] if n["id"] == nid)
        neg["wire"] = good["wire"]
        neg.pop("plaintext_envelope", None)
    passed, failures = replay_waku(d)
    text = "\n".join(failures)
    assert "neg-asym-ct-bitflip: accepted" in text
    assert "neg-asym-sig-s-bitflip: accepted as signed by the signer" in text
    assert "neg-asym-R-off-curve: accepted" in text and "neg-asym-truncated: accepted" in text
    assert passed == len(doc["vectors"]) + len(doc["negatives"]) + 2 - 4


def test_a_negative_rejected_at_the_wrong_stage_fails(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    neg = next(n for n in d["negatives"] if n["id"] == "neg-asym-ct-bitflip")
    neg["expect"] = "invalid_ephemeral_key"
    neg2 = next(n for n in d["negatives"] if n["id"] == "neg-sym-ct-bitflip")
    neg2["expect"] = "something new"
    neg3 = next(n for n in d["negatives"] if n["id"] == "neg-asym-sig-v27")
    neg3["wire"] = _flip(neg3["wire"], 100)
    neg4 = next(n for n in d["negatives"] if n["id"] == "neg-asym-truncated")
    neg4["expect"] = "truncated wire"  # a close variant of a known stage still replays
    passed, failures = replay_waku(d)
    assert any("neg-asym-ct-bitflip: rejected with DecryptFailed, expected BadEphemeralKey" in f for f in failures)
    assert any("neg-sym-ct-bitflip: expect: unknown expectation" in f for f in failures)
    assert any("neg-asym-sig-v27: expected to decrypt, rejected with DecryptFailed" in f for f in failures)
    assert not any(f.startswith("neg-asym-truncated") for f in failures)
    assert passed == len(doc["vectors"]) + len(doc["negatives"]) + 2 - 3


def test_junk_in_a_case_is_a_failure_line_not_a_crash(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    d["vectors"][0]["wire"] = "zz"
    d["vectors"][1]["payload"] = 12
    del d["vectors"][2]["payload"]  # optional: still passes
    d["negatives"][0]["wire"] = ""
    d["status"]["negotiated"]["b_pub"] = "04" + "00" * 64
    passed, failures = replay_waku(d)
    ids = {f.split(":")[0] for f in failures}
    assert ids == {d["vectors"][0]["id"], d["vectors"][1]["id"], d["negatives"][0]["id"], "status.negotiated"}
    assert passed == len(doc["vectors"]) + len(doc["negatives"]) + 2 - 4


def test_status_derivations_checked(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    d["status"]["negotiated"]["sym_key"] = _flip(d["status"]["negotiated"]["sym_key"], 0)
    d["status"]["partitioned"]["topic_string"] = "contact-discovery-3441"
    passed, failures = replay_waku(d)
    assert any(f.startswith("status.negotiated: sym_key") for f in failures)
    assert any(f.startswith("status.partitioned: topic_string") for f in failures)


def test_registry_finds_the_document_anywhere_in_a_tree(doc: dict[str, Any]) -> None:
    from agent.conformance import replay_data

    total = len(doc["vectors"]) + len(doc["negatives"]) + 2
    result = replay_data(doc, "waku_payload.json")
    assert (result.passed, result.failed, result.failures) == (total, 0, [])
    bad = copy.deepcopy(doc)
    bad["negatives"][0]["expect"] = "too_short"
    nested = replay_data({"suite": [{"go": bad}]}, "f.json")
    assert nested.passed == total - 1 and nested.failed == 1
    assert nested.failures[0].startswith("f.json:suite[0].go.neg-asym-ct-bitflip: rejected with DecryptFailed")
