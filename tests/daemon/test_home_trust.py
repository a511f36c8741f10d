"""The home is obeyed only when nobody but its owner can have written it (agent/home_trust.py), tried with real
agents, a real second uid (``nobody``) and the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.daemon.agentproc import REPO, AgentFactory, make_software_home

root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second uid (CI runs as root)")


@pytest.fixture
def base() -> Iterator[Path]:
    """A short directory others may traverse (0711), so ``nobody`` can reach a home made writable inside it."""
    d = Path(tempfile.mkdtemp(prefix="ka-ht-", dir="/tmp"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _refused(cp: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert cp.returncode != 0, cp.stdout
    assert "UNSAFE_HOME" in cp.stderr or "UnsafeHome" in cp.stderr, cp.stderr
    for needle in needles:
        assert needle in cp.stderr, cp.stderr


def _keyagent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KEYAGENT_")}
    e.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "agent", *args], env=e, text=True, capture_output=True, timeout=120)


@root_only
def test_agent_json_planted_by_another_uid_in_a_writable_home_is_never_obeyed(agents: AgentFactory,
                                                                              base: Path) -> None:
    home = make_software_home(base / "home")
    os.chmod(home, 0o777)
    marker = base / "ran-as-owner"
    planted = json.dumps({"confirm_command": ["/usr/bin/touch", str(marker)], "confirm_ops": ["sign"]})
    subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/bin/sh", "-c",
                    f"printf '%s' '{planted}' > {home}/agent.json"], check=True, timeout=30)
    assert (home / "agent.json").stat().st_uid == 65534
    a = agents.new(home=home)
    cp = a.start(check=False)
    _refused(cp, str(home), "chmod go-w")
    assert not marker.exists()


def test_world_writable_home_is_refused_by_start_and_init(agents: AgentFactory, base: Path) -> None:
    home = make_software_home(base / "home")
    os.chmod(home, 0o777)
    _refused(agents.new(home=home).start(check=False), f"home {home}", f"chmod go-w {home}")
    fresh = base / "fresh"
    fresh.mkdir(mode=0o700)
    os.chmod(fresh, 0o757)
    cp = _keyagent("--home", str(fresh), "init", "--backend", "software", env={"KEYAGENT_PASSPHRASE": "pw"})
    _refused(cp, str(fresh))
    assert not (fresh / "config.json").exists() and not (fresh / "identity.key").exists()


def test_writable_parent_is_refused_but_a_sticky_root_tmp_is_not(agents: AgentFactory, base: Path) -> None:
    parent = base / "shared"
    parent.mkdir()
    home = make_software_home(parent / "home")
    os.chmod(parent, 0o777)  # not sticky: anyone may rename the home away and put their own in its place
    _refused(agents.new(home=home).start(check=False), f"parent {parent}", f"chmod go-w {parent}")
    os.chmod(parent, 0o755)
    a = agents.new(home=home)
    a.start()  # the home lives under /tmp (root, 1777): allowed
    assert a.alive()


def test_key_file_readable_by_others_is_refused_like_doctor_fails_it(agents: AgentFactory, base: Path) -> None:
    home = make_software_home(base / "home")
    os.chmod(home / "identity.key", 0o644)
    _refused(agents.new(home=home).start(check=False), str(home / "identity.key"), "chmod 600")
    doctor = _keyagent("--home", str(home), "doctor", "--json")
    assert "identity.key" in doctor.stdout and '"FAIL"' in doctor.stdout


@root_only
def test_home_or_file_owned_by_another_uid_is_refused(agents: AgentFactory, base: Path) -> None:
    home = make_software_home(base / "home")
    os.chown(home / "config.json", 65534, -1)
    _refused(agents.new(home=home).start(check=False), str(home / "config.json"), "owned by uid 65534")
    os.chown(home / "config.json", 0, -1)
    os.chown(home, 65534, -1)
    _refused(agents.new(home=home).start(check=False), f"home {home} is owned by uid 65534")


@pytest.mark.parametrize("name", ["agent.json", "config.json", "audit.log", "agent.log"])
def test_trusted_files_are_not_followed_through_symlinks(agents: AgentFactory, base: Path, name: str) -> None:
    home = make_software_home(base / "home")
    elsewhere = base / "elsewhere"
    if name == "config.json":
        (home / name).rename(elsewhere)
    else:
        elsewhere.write_text("{}" if name == "agent.json" else "")
    (home / name).symlink_to(elsewhere)
    _refused(agents.new(home=home).start(check=False), str(home / name), "symlink")


def test_offline_whoami_and_hardware_listing_refuse_an_unsafe_home(base: Path) -> None:
    home = make_software_home(base / "home")
    os.chmod(home, 0o777)
    run = base / "run"
    run.mkdir(mode=0o700)  # no agent answers there: whoami falls back to reading the home, and must refuse it
    _refused(_keyagent("--home", str(home), "whoami", env={"XDG_RUNTIME_DIR": str(run)}), str(home))
    cfg = json.loads((home / "config.json").read_text())
    cfg.update(backend="pkcs11", pkcs11={"module": str(base / "evil.so"), "token": "x", "token_serial": "1",
                                         "namespace": "00" * 8, "identity_id": "01"})
    (home / "config.json").write_text(json.dumps(cfg))
    _refused(_keyagent("--home", str(home), "devices", "--json"), str(home))


def test_agent_json_loader_refuses_the_unsafe_home_itself(base: Path) -> None:
    from agent.daemon.config import Home, load_config
    from agent.home_trust import UnsafeHome

    home = base / "h"
    home.mkdir(mode=0o700)
    (home / "agent.json").write_text(json.dumps({"max_frame": 1024}))
    assert load_config(Home.at(home)).max_frame == 1024
    os.chmod(home / "agent.json", 0o666)
    with pytest.raises(UnsafeHome, match="chmod go-w"):
        load_config(Home.at(home))


def test_trusted_opens_refuse_a_symlink_planted_after_the_checks(base: Path) -> None:
    """O_NOFOLLOW is the second line: a link swapped in between the lstat checks and the open is not followed."""
    import errno

    from agent.daemon.audit import AuditLog
    from agent.home_trust import UnsafeHome, open_nofollow
    from backends.files import read_capped

    target = base / "target"
    target.write_text("{}")
    link = base / "link"
    link.symlink_to(target)
    with pytest.raises(UnsafeHome, match="symlink"):
        read_capped(link, 100)  # config.json, PIN files
    with pytest.raises(UnsafeHome, match="symlink"):
        open_nofollow(link, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # agent.log, agent.json
    with pytest.raises(OSError) as info:
        AuditLog(link)
    assert info.value.errno == errno.ELOOP and target.read_text() == "{}"
