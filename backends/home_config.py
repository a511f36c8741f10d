"""Reading ``<home>/config.json``: the one loader every reader shares, with one typed error per way it fails.

The daemon (via :func:`backends.home.load_config`, which adds the schema check), the offline ``whoami``, the
doctor and ``keyagent devices`` all read the same file; each turns these errors into its own words (the doctor
names a fix, ``whoami`` falls back to the chat key, the device listing shows nothing). The file is read capped,
so a huge or endless file costs a bounded read, and only from a home nobody else can write (agent/home_trust.py:
the home, its parents and this file are checked first, and the file is opened with O_NOFOLLOW), because
the config names the PKCS#11 module the agent loads (the other files of the home are checked by
:func:`backends.home.load_config`, before the daemon uses them; the doctor names each one's fix itself). Nothing here checks the schema: that is
:func:`backends.home.validate_config`, so a reader that only needs one section is not refused by another.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agent.home_trust import UnsafeHome, check_home, check_home_file
from backends.errors import BackendConfigError
from backends.files import FileTooLarge, read_capped

__all__ = [
    "CONFIG_NAME",
    "MAX_CONFIG",
    "config_path",
    "HomeConfigError",
    "ConfigMissing",
    "ConfigUnreadable",
    "ConfigUntrusted",
    "ConfigTooLarge",
    "ConfigMalformed",
    "read_home_config",
]

CONFIG_NAME = "config.json"
#: a config is a few hundred bytes; anything above this is not the file ``keyagent init`` wrote
MAX_CONFIG = 1 << 20


def config_path(home: str | os.PathLike[str]) -> str:
    return os.path.join(home, CONFIG_NAME)


class HomeConfigError(BackendConfigError):
    """``config.json`` could not be read as JSON; ``path`` is the file (the subclass says why)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class ConfigMissing(HomeConfigError):
    """There is no ``config.json``: the home is not provisioned (run ``keyagent init``)."""


class ConfigUnreadable(HomeConfigError):
    """The file exists but the OS refuses to read it (owner, mode, I/O): ``error`` is the OSError."""

    def __init__(self, message: str, path: str, error: OSError) -> None:
        super().__init__(message, path)
        self.error = error


class ConfigUntrusted(HomeConfigError):
    """Another user could have written the home or the file: ``error`` is the UnsafeHome naming the path and fix."""

    def __init__(self, message: str, path: str, error: UnsafeHome) -> None:
        super().__init__(message, path)
        self.error = error


class ConfigTooLarge(HomeConfigError):
    """The file is larger than :data:`MAX_CONFIG`: not the file init wrote (restore it)."""


class ConfigMalformed(HomeConfigError):
    """The file is not JSON (restore it from a backup or re-run init)."""


def read_home_config(home: str | os.PathLike[str]) -> Any:
    """The parsed JSON of ``<home>/config.json`` (any JSON value: the caller checks its shape), or a typed error."""
    path = config_path(home)
    try:
        check_home(home)
        check_home_file(path)
        raw = read_capped(path, MAX_CONFIG)
    except UnsafeHome as exc:
        raise ConfigUntrusted(str(exc), path, exc) from exc
    except FileNotFoundError as exc:
        raise ConfigMissing(f"{path} does not exist: run keyagent init", path) from exc
    except FileTooLarge as exc:
        raise ConfigTooLarge(f"{path} is too large", path) from exc
    except OSError as exc:
        raise ConfigUnreadable(f"cannot read {path}: {exc.strerror}", path, exc) from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigMalformed(f"{path} is not JSON", path) from exc
