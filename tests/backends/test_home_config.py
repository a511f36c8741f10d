"""backends/home_config.py: each way config.json fails to read is its own typed error, and the file is read capped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.errors import BackendConfigError
from backends.home_config import (
    MAX_CONFIG,
    ConfigMalformed,
    ConfigMissing,
    ConfigTooLarge,
    ConfigUnreadable,
    ConfigUntrusted,
    read_home_config,
)


def test_each_failure_has_its_type_and_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    with pytest.raises(ConfigMissing) as missing:
        read_home_config(tmp_path)
    assert missing.value.path == str(path) and "run keyagent init" in str(missing.value)
    path.mkdir()  # the OS refuses to read a directory: unreadable, with the OSError kept
    with pytest.raises(ConfigUnreadable) as unreadable:
        read_home_config(tmp_path)
    assert isinstance(unreadable.value.error, IsADirectoryError)
    path.rmdir()
    path.write_bytes(b"{not json")
    with pytest.raises(ConfigMalformed):
        read_home_config(tmp_path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigMalformed):
        read_home_config(tmp_path)
    path.write_bytes(b" " * (MAX_CONFIG + 1))
    with pytest.raises(ConfigTooLarge):
        read_home_config(tmp_path)
    path.unlink()
    (tmp_path / "elsewhere.json").write_text("{}")
    path.symlink_to(tmp_path / "elsewhere.json")  # never followed: the config names the module that is loaded
    with pytest.raises(ConfigUntrusted) as untrusted:
        read_home_config(tmp_path)
    assert "symlink" in str(untrusted.value.error)
    for cls in (ConfigMissing, ConfigUnreadable, ConfigMalformed, ConfigTooLarge, ConfigUntrusted):
        assert issubclass(cls, BackendConfigError)


def test_any_json_value_is_returned_unvalidated(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    assert read_home_config(tmp_path) == [1, 2]
    (tmp_path / "config.json").write_text(json.dumps({"backend": "software", "extra": True}))
    assert read_home_config(str(tmp_path)) == {"backend": "software", "extra": True}
