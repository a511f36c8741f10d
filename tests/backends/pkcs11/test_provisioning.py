"""Provisioning a home on a real SoftHSM2 token (fresh store and token per test): ``provision_identity``, the
config checks, and ``keyagent init`` / ``migrate`` with the pkcs11 backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from agent.core import secp256k1
from agent.core.hashing import keccak256
from backends.errors import BackendConfigError, PinIncorrect
from backends.home import load_config, open_backend, provision_identity
from tests.backends.pkcs11.helpers import pkcs11_home as _home
from tests.helpers.softhsm import SoftHSMToken


def test_provision_twice_refused_and_nothing_left_on_failure(softhsm_token: SoftHSMToken) -> None:
    home = _home(softhsm_token)
    from backends.errors import KeyExists

    with pytest.raises(KeyExists):
        _home_again = provision_identity(home, "pkcs11", module=softhsm_token.module, token=softhsm_token.label,
                                         pin=softhsm_token.pin)
    before = softhsm_token.pkcs11_tool("--list-objects", login=True)
    home2 = tempfile.mkdtemp(dir=softhsm_token.dir)
    with pytest.raises(PinIncorrect):
        provision_identity(home2, "pkcs11", module=softhsm_token.module, token=softhsm_token.label, pin="0000")
    assert softhsm_token.pkcs11_tool("--list-objects", login=True) == before
    assert not os.listdir(home2)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("pkcs11"),
        lambda c: c["pkcs11"].__setitem__("namespace", "zz"),
        lambda c: c["pkcs11"].__setitem__("workers", 0),
        lambda c: c["pkcs11"].__setitem__("os_locking", "yes"),
        lambda c: c["pkcs11"].__setitem__("pin_ttl", -1),
        lambda c: c.__setitem__("backend", "tpm"),
        lambda c: c.__setitem__("identity_public_key", "02" + "00" * 32),  # x=0 is not on the curve
        lambda c: c.__setitem__("version", 2),
    ],
)
def test_bad_config_rejected(softhsm_token: SoftHSMToken, mutate: Any) -> None:
    home = _home(softhsm_token)
    path = os.path.join(home, "config.json")
    cfg = json.load(open(path))
    mutate(cfg)
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    with pytest.raises(BackendConfigError):
        load_config(home)


def test_cli_init_and_migrate(softhsm_token: SoftHSMToken, tmp_path: Any) -> None:
    env = dict(softhsm_token.env, KEYAGENT_PASSPHRASE="pass phrase", KEYAGENT_PIN=softhsm_token.pin)
    home = str(tmp_path / "home")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args, "--home", home], env=env,
                              capture_output=True, text=True)

    r = run("init", "--backend", "software", "--scrypt-n", "1024")
    assert r.returncode == 0, r.stderr
    sw_pub = load_config(home)["identity_public_key"]
    assert stat_mode(os.path.join(home, "config.json")) == 0o600
    r = run("init", "--backend", "software", "--scrypt-n", "1024")
    assert r.returncode != 0 and "KEY_EXISTS" in r.stderr  # the error's code, not a Python class name
    pinfile = tmp_path / "pin"
    pinfile.write_text(softhsm_token.pin + "\n")
    pinfile.chmod(0o600)
    env.pop("KEYAGENT_PIN")
    r = run("migrate", "--module", softhsm_token.module, "--token", softhsm_token.label, "--pin-file", str(pinfile))
    assert r.returncode == 0, r.stderr
    assert "not 'never extractable'" in r.stdout
    cfg = load_config(home)
    assert cfg["backend"] == "pkcs11" and cfg["identity_public_key"] == sw_pub
    b = open_backend(cfg, home=home)
    b.unlock(softhsm_token.pin)
    digest = keccak256(b"migrated")
    secp256k1.verify(digest, b.identity().sign(digest), bytes.fromhex(sw_pub))
    assert [i.version for i in b.list_signed_prekeys()] == [1]
    b.close()
    # pkcs11 init through the CLI on a fresh home, PIN from a file
    home2 = str(tmp_path / "home2")
    r = subprocess.run([sys.executable, "-m", "agent", "init", "--backend", "pkcs11", "--module",
                        softhsm_token.module, "--token", f"pkcs11:token={softhsm_token.label}", "--pin-file",
                        str(pinfile), "--home", home2], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_config(home2)["pkcs11"]["token_serial"] == softhsm_token.serial
    pinfile.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "agent", "init", "--backend", "pkcs11", "--module",
                        softhsm_token.module, "--token", softhsm_token.label, "--pin-file", str(pinfile),
                        "--home", str(tmp_path / "home3")], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "readable by others" in r.stderr


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "pkcs11", "--token", "x"], "needs --module"),
        (["--backend", "pkcs11", "--module", "/nonexistent.so", "--token", "x", "--adopt-id", "zz"], "hex"),
        (["--backend", "software", "--adopt-label", "x"], "needs --backend pkcs11"),
        (["--backend", "pkcs11", "--module", "/nonexistent.so", "--token", "x"], "cannot load PKCS#11 module"),
    ],
)
def test_cli_init_refusals(tmp_path: Any, args: list[str], message: str) -> None:
    env = dict(os.environ, KEYAGENT_PIN="1234", KEYAGENT_PASSPHRASE="p")
    r = subprocess.run([sys.executable, "-m", "agent", "init", *args, "--home", str(tmp_path / "h")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "h" / "config.json").exists()
