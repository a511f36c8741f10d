"""The vectors replay tool: every shipped vector passes, any flipped recorded byte fails, CLI contract."""

from __future__ import annotations

import copy
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.conformance import Case, replay_data, replay_file
from agent.conformance.registry import recognisers

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
CORE_FILES = ["dr_primitives.json", "dr_conversation_examples.json", "x3dh_examples.json",
              "status_go_conversation.json", "status_go_wire.json"]
HEX = re.compile(r"^(?:[0-9a-f]{2})+$")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "vectors", "replay", *args],
                          capture_output=True, text=True, timeout=300)


def test_all_shipped_vectors_replay_through_the_cli() -> None:
    files = sorted(str(p) for p in VECTORS.glob("*.json"))
    assert len(files) >= 4
    out = cli(*files)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert m and int(m.group(1)) > 100, last


@pytest.mark.parametrize("name", CORE_FILES)
def test_each_core_file_has_cases_and_passes(name: str) -> None:
    r = replay_file(VECTORS / name)
    assert r.passed > 0 and r.failed == 0, r.failures[:5]


def _hex_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _hex_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _hex_paths(v, path + (i,))
    elif isinstance(node, str) and HEX.match(node):
        yield path


def _checkable(data: Any, path: tuple[Any, ...]) -> bool:
    """Recorded values whose change must be detectable.

    Excluded, by design: provenance metadata (commit ids), opaque session ids the library never uses,
    limits a conversation never reaches, ``protocol_version`` (not signed by design), and the inputs of negative cases that are *already* wrong (a flipped byte inside a wrong MAC key or
    an invalid point keeps them wrong; what those cases pin is the error).
    """
    if path and path[-1] == "protocol_version":
        return False
    if any(p in ("library", "status_go_commit", "session_ids", "commit", "options") for p in path):
        return False  # limits only show when a conversation reaches them
    node = data
    for i, p in enumerate(path[:-1]):
        node = node[p]
        if isinstance(node, dict) and node.get("error") not in (None, ""):
            # a failing receive: only its delivered input is already wrong; its state_after etc. count
            return "delivered" in node and path[i + 1] not in ("delivered", "message")
    return True


def _int_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _int_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _int_paths(v, path + (i,))
    elif isinstance(node, int) and not isinstance(node, bool):
        yield path


def _flip(value: Any, rng: random.Random) -> Any:
    if isinstance(value, int):
        return value ^ (1 << rng.randrange(3))
    i = rng.randrange(len(value))
    return value[:i] + rng.choice("0123456789abcdef".replace(value[i], "")) + value[i + 1:]


@pytest.mark.parametrize("name,samples", [("dr_primitives.json", 80), ("dr_conversation_examples.json", 60),
                                          ("x3dh_examples.json", 30), ("status_go_conversation.json", 40),
                                          ("status_go_wire.json", 40)])
def test_one_flipped_recorded_value_anywhere_fails(name: str, samples: int) -> None:
    data = json.loads((VECTORS / name).read_text())
    paths = [p for p in [*_hex_paths(data), *_int_paths(data)] if _checkable(data, p)]
    rng = random.Random(f"flip {name}")
    for path in rng.sample(paths, min(samples, len(paths))):
        doc = copy.deepcopy(data)
        node = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = _flip(node[path[-1]], rng)
        r = replay_data(doc, name)
        assert r.failed > 0, f"flip in {path} went unnoticed"


def test_cli_reports_case_and_field_and_fails(tmp_path: Path) -> None:
    data = json.loads((VECTORS / "x3dh_examples.json").read_text())
    sk = data["status_go_unit_test_vector"]["initiator"]["shared_key"]
    data["status_go_unit_test_vector"]["initiator"]["shared_key"] = ("0" if sk[0] != "0" else "1") + sk[1:]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    out = cli(str(bad), str(VECTORS / "dr_primitives.json"))
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert any("status_go_unit_test_vector" in ln and "initiator.shared_key" in ln for ln in lines), lines
    assert re.fullmatch(r"\d+ passed, 1 failed", lines[-1]), lines[-1]


def test_cli_fails_on_nothing_recognised_and_on_bad_json(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"hello": [1, 2, 3]}))
    out = cli(str(empty))
    assert out.returncode == 1 and out.stdout.strip().endswith("0 passed, 0 failed")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    out = cli(str(broken))
    assert out.returncode == 1 and "0 passed, 1 failed" in out.stdout


def test_conversation_found_at_top_level_and_nested() -> None:
    data = json.loads((VECTORS / "dr_conversation_examples.json").read_text())
    single = {"conversation": data["scenarios"][0]}
    assert replay_data(single).passed == 1
    assert replay_data(data["scenarios"][1]).passed == 1
    assert replay_data({"some": {"deeper": [data["scenarios"][2]]}}).passed == 1


def test_registry_discovers_core_recognisers() -> None:
    names = {r.__name__ for r in recognisers()}
    assert {"dr_primitive_cases", "dr_conversations", "x3dh_cases"} <= names
    assert isinstance(Case("x", lambda: []), Case)


def test_bundle_nested_in_an_x3dh_case_is_checked() -> None:
    data = json.loads((VECTORS / "x3dh_examples.json").read_text())
    case = data["status_go_unit_test_vector"]
    case["bundle"] = copy.deepcopy(data["bundles"][0])
    assert replay_data({"x": case}).passed == 2
    case["bundle"]["timestamp"] += 1
    r = replay_data({"x": case})
    assert r.passed == 1 and r.failed == 1 and any("x.bundle" in f for f in r.failures)


def test_single_primitive_cases_are_recognised_by_shape() -> None:
    data = json.loads((VECTORS / "dr_primitives.json").read_text())
    doc = {"one": data["kdf_rk"][1], "two": {"x": data["aead"][3]}}
    assert replay_data(doc).passed == 2
    doc["one"]["chain_key"] = doc["one"]["new_root_key"]
    r = replay_data(doc)
    assert r.failed == 1 and any("one: chain_key" in f for f in r.failures)
