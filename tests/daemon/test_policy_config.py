"""agent.json ``policy`` and ``rotate_interval``: parsed strictly (the daemon refuses to start rather than guess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.daemon.config import ConfigError, Home, load_config


def _load(tmp_path: Path, doc: object) -> object:
    (tmp_path / "agent.json").write_text(json.dumps(doc))
    return load_config(Home.at(tmp_path))


def test_policy_rules_are_parsed(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"rotate_interval": 60, "policy": [
        {"name": "custody", "uid": [1001, 1002], "allow": ["decrypt", "app_wrap"]},
        {"gid": 50, "exe": "/usr/bin/app", "allow": ["sign"]}]})
    rules = cfg.policy  # type: ignore[attr-defined]
    assert rules[0].name == "custody" and rules[0].uids == frozenset({1001, 1002})
    assert rules[1].name == "policy[1]" and rules[1].gids == frozenset({50}) and rules[1].exe == "/usr/bin/app"
    assert cfg.rotate_interval == 60.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", [
    {"uid": 1},                                           # not a list
    [{"uid": 1, "allow": ["rotat"]}],                     # unknown request type
    [{"allow": ["status"]}],                              # matches nobody in particular
    [{"uid": "root", "allow": []}],
    [{"uid": 1, "exe": "relative/path", "allow": []}],
    [{"uid": 1, "allow": [], "deny": ["sign"]}],          # unknown key
])
def test_bad_policies_are_refused(tmp_path: Path, policy: object) -> None:
    with pytest.raises(ConfigError):
        _load(tmp_path, {"policy": policy})


def test_negative_rotate_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _load(tmp_path, {"rotate_interval": -1})
