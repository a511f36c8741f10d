"""The bundle's JSON form (``keyagent bundle --json``, ``add-bundle``): byte-for-byte round trips, and every
malformed document refused with a typed error."""

from __future__ import annotations

import json

import pytest

from agent.core.bundle import sign_bundle
from agent.core.bundle_json import BundleJsonError, bundle_from_json, bundle_to_json
from agent.core.wire import encode_bundle
from backends.memory import MemoryKey


def _bundle_bytes() -> bytes:
    ik, spk = MemoryKey.generate(), MemoryKey.generate()
    return encode_bundle(sign_bundle(ik, {"inst-1": (spk.public_key(), 3, 1)}, 1_700_000_000_000_000_000))


def test_bundle_json_round_trips_byte_for_byte() -> None:
    raw = _bundle_bytes()
    doc = bundle_to_json(raw)
    assert set(doc) == {"identity", "signed_pre_keys", "timestamp", "signature"}
    assert doc["signed_pre_keys"]["inst-1"]["version"] == 3
    assert bundle_from_json(json.loads(json.dumps(doc))) == raw
    doc["identity"] = "0x" + doc["identity"]  # 0x prefixes are accepted
    assert bundle_from_json(doc) == raw


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(identity=5),
    lambda d: d.update(identity="xyz"),
    lambda d: d.update(extra=1),
    lambda d: d.update(timestamp="1"),
    lambda d: d.update(timestamp=True),
    lambda d: d.update(timestamp=1 << 63),
    lambda d: d.update(signed_pre_keys=[]),
    lambda d: d["signed_pre_keys"].update({"x": 1}),
    lambda d: d["signed_pre_keys"]["inst-1"].update(version=-1),
    lambda d: d["signed_pre_keys"]["inst-1"].update(version=1 << 32),
    lambda d: d["signed_pre_keys"]["inst-1"].update(colour="red"),
])
def test_bundle_json_rejects_malformed_documents(mutate: object) -> None:
    doc = bundle_to_json(_bundle_bytes())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(BundleJsonError):
        bundle_from_json(doc)


def test_bundle_json_rejects_non_objects() -> None:
    docs: list[object] = [[], "x", 1, None]
    for doc in docs:
        with pytest.raises(BundleJsonError):
            bundle_from_json(doc)
