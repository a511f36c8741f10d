"""``keyagent devices | install-udev | doctor`` as a user runs them: real processes on a fresh SoftHSM2 store,
and in-process runs for the paths that need a simulated machine (no libusb, not root)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import usb.backend.libusb0
import usb.backend.libusb1
import usb.backend.openusb

from agent.cli import build_parser, cmd_hardware, main
from agent.core import secp256k1
from agent.hardware import udev
from backends.memory import MemoryKey
from tests.helpers.p11kit import SOFTHSM_MODULE, P11KitServer

LABEL, PIN, SO_PIN = "hw-doctor", "1234", "5678"


class Store:
    """A fresh SoftHSM2 store with one token, and a keyagent home pointing at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tokens").mkdir()
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {root}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
        self.home = root / "home"
        self.home.mkdir(mode=0o700)
        self.run = root / "run"
        self.run.mkdir(mode=0o700)
        self.env = dict(os.environ, SOFTHSM2_CONF=str(self.conf), XDG_RUNTIME_DIR=str(self.run),
                        KEYAGENT_HOME=str(self.home))
        self.env.pop("KEYAGENT_SOCK", None)
        self.env.pop("KEYAGENT_PIN", None)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", SO_PIN],
                       env=self.env, check=True, capture_output=True)
        out = subprocess.run(["softhsm2-util", "--show-slots"], env=self.env, check=True, capture_output=True,
                             text=True).stdout
        m = re.search(r"Serial number:\s+(\S+)\s*\n\s*Initialized:\s+yes", out) or re.search(
            r"Label:\s+" + LABEL + r"[\s\S]*?Serial number:\s+(\S+)", out)
        assert m, out
        self.serial = m.group(1)

    def tool(self, *args: str, module: str = SOFTHSM_MODULE, env: dict[str, str] | None = None) -> str:
        res = subprocess.run(["pkcs11-tool", "--module", module, "--token-label", LABEL, *args],
                             env=env or self.env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def keygen(self, key_id: str, *extra: str) -> bytes:
        """A secp256k1 pair made by OpenSC on the token; returns the compressed public key."""
        self.tool("--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:secp256k1", "--label", f"k{key_id}",
                  "--id", key_id, *extra)
        out = self.tool("--list-objects", "--type", "pubkey", "--id", key_id)
        m = re.search(r"EC_POINT:\s+0441([0-9a-f]{130})", out)
        assert m, out
        return secp256k1.compress(bytes.fromhex(m.group(1)))

    def write_config(self, key_id: str, pub: bytes, *, module: str = SOFTHSM_MODULE, serial: str | None = None,
                     **extra: Any) -> None:
        # The documented config.json of backends/home.py (what `keyagent init --backend pkcs11` writes).
        doc = {"version": 1, "backend": "pkcs11", "identity_public_key": pub.hex(),
               "pkcs11": {"module": module, "token": f"pkcs11:token={LABEL}", "token_serial": serial or self.serial,
                          "token_label": LABEL, "namespace": "00" * 8, "identity_id": key_id, "identity_label": None,
                          "identity_origin": "generated", "allow_extractable": False, **extra}}
        path = self.home / "config.json"
        path.write_text(json.dumps(doc))
        path.chmod(0o600)

    def keyagent(self, *args: str, env: dict[str, str] | None = None,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args], env=env or self.env, capture_output=True,
                              text=True, input=stdin, timeout=120, cwd=str(Path(__file__).resolve().parents[2]))

    def doctor(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, tuple[str, str, str]]]:
        res = self.keyagent("doctor", "--json", *args, env=env)
        assert res.returncode in (0, 1), res.stderr
        doc = json.loads(res.stdout)
        assert doc["exit"] == res.returncode
        return res.returncode, {r["check"]: (r["status"], r["summary"], r["fix"] or "") for r in doc["results"]}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


# ----- doctor on a fresh SoftHSM2 home ------------------------------------------------------------------------------

def test_doctor_fresh_softhsm_home(store: Store) -> None:
    pub = store.keygen("01")
    store.write_config("01", pub)
    rc, r = store.doctor()
    assert rc == 0
    assert {k: v[0] for k, v in r.items()} == {
        "config": "OK", "module": "OK", "token": "OK", "pin": "OK", "identity": "WARN", "socket-dir": "OK",
        "store": "OK", "anchor": "OK", "udev": "OK", "pcscd": "SKIP", "clock": "OK"}
    assert store.serial in r["token"][1] and "--login" in r["identity"][2]

    # The text form has the same lines, one per check, and a fix line under the WARN.
    text = store.keyagent("doctor")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if ln[:4].strip() in ("OK", "WARN", "FAIL", "SKIP")] == [
        "OK", "OK", "OK", "OK", "WARN", "OK", "OK", "OK", "OK", "SKIP", "OK"]
    assert any(ln.strip().startswith("fix: run `keyagent doctor --login`") for ln in lines)

    # With a login the private key's attributes are visible: generated on the token, never extractable.
    rc, r = store.doctor("--login", env=dict(store.env, KEYAGENT_PIN=PIN))
    assert rc == 0 and r["identity"][0] == "OK" and "never extractable" in r["identity"][1]


def test_doctor_after_real_keyagent_init(store: Store) -> None:
    # The home exactly as `keyagent init --backend pkcs11` writes it (identity and SPK 1 generated on the token).
    init = store.keyagent("init", "--backend", "pkcs11", "--module", SOFTHSM_MODULE, "--token", f"label:{LABEL}",
                          env=dict(store.env, KEYAGENT_PIN=PIN))
    assert init.returncode == 0, init.stderr
    rc, r = store.doctor()
    assert rc == 0, r
    assert {k: v[0] for k, v in r.items()} == {
        "config": "OK", "module": "OK", "token": "OK", "pin": "OK", "identity": "WARN", "socket-dir": "OK",
        "store": "OK", "anchor": "OK", "udev": "OK", "pcscd": "SKIP", "clock": "OK"}
    rc, r = store.doctor("--login", env=dict(store.env, KEYAGENT_PIN=PIN))
    assert rc == 0 and r["identity"][0] == "OK" and "never extractable" in r["identity"][1]
    res = store.keyagent("devices")
    assert res.returncode == 0 and f"token '{LABEL}'  serial {store.serial}" in res.stdout
    assert "<- this home" in res.stdout


def test_doctor_fails_on_extractable_identity(store: Store, tmp_path: Path) -> None:
    pub = store.keygen("02", "--extractable")
    store.write_config("02", pub)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    rc, r = store.doctor("--pin-file", str(pin_file))
    assert rc == 1 and r["identity"][0] == "FAIL" and "EXTRACTABLE" in r["identity"][1]
    store.write_config("02", pub, allow_extractable=True)  # the user forced it at init: a warning, not a failure
    rc, r = store.doctor("--pin-file", str(pin_file))
    assert rc == 0 and r["identity"][0] == "WARN"


def test_doctor_fails_on_open_socket_dir(store: Store) -> None:
    pub = store.keygen("01")
    store.write_config("01", pub)
    (store.run / "keyagent").mkdir(mode=0o755)
    (store.run / "keyagent").chmod(0o755)
    rc, r = store.doctor()
    assert rc == 1 and r["socket-dir"][0] == "FAIL" and "0755" in r["socket-dir"][1]
    assert r["socket-dir"][2] == f"chmod 700 {store.run / 'keyagent'}"
    (store.run / "keyagent").chmod(0o700)
    assert store.doctor()[0] == 0


def test_doctor_wrong_pin_then_count_low(store: Store, tmp_path: Path) -> None:
    pub = store.keygen("01")
    store.write_config("01", pub)
    pin_file = tmp_path / "pin"
    pin_file.write_text("9999\n")
    rc, r = store.doctor("--pin-file", str(pin_file))
    assert rc == 1 and r["identity"][0] == "FAIL" and "rejected" in r["identity"][1]
    rc, r = store.doctor()  # the token now reports USER_PIN_COUNT_LOW (SoftHSM's only PIN flag)
    assert rc == 0 and r["pin"][0] == "WARN" and "COUNT_LOW" in r["pin"][1]


def test_doctor_wrong_token_and_wrong_key(store: Store) -> None:
    pub = store.keygen("01")
    store.write_config("01", pub, serial="0123456789abcdef")
    rc, r = store.doctor()
    assert rc == 1 and r["token"][0] == "FAIL" and "0123456789abcdef" in r["token"][1]
    assert r["pin"][0] == r["identity"][0] == "SKIP"
    other = MemoryKey(b"\x01" * 32).public_key()
    store.write_config("01", other)
    rc, r = store.doctor()
    assert rc == 1 and r["identity"][0] == "FAIL" and "not this home's identity" in r["identity"][1]
    store.write_config("05", pub)
    rc, r = store.doctor()
    assert rc == 1 and r["identity"][0] == "FAIL" and "no secp256k1 public key with id 05" in r["identity"][1]


def test_doctor_module_missing(store: Store) -> None:
    store.write_config("01", MemoryKey(b"\x02" * 32).public_key(), module=str(store.root / "missing.so"))
    rc, r = store.doctor()
    assert rc == 1 and r["module"][0] == "FAIL" and "does not exist" in r["module"][1]
    assert r["token"][0] == "SKIP"


def test_doctor_token_behind_stopped_p11kit_server(store: Store) -> None:
    pub = store.keygen("01")
    with P11KitServer(str(store.root / "p11.sock"), token_label=LABEL, env={"SOFTHSM2_CONF": str(store.conf)}) as srv:
        store.write_config("01", pub, module=srv.client_module)
        env = srv.client_env(store.env)
        rc, r = store.doctor(env=env)
        assert rc == 0 and r["token"][0] == "OK" and r["identity"][0] == "WARN"
        assert r["udev"][0] == "OK"  # a p11-kit client needs no USB rule
        srv.stop()  # unplug
        rc, r = store.doctor(env=env)
        assert rc == 1 and r["token"][0] == "FAIL" and "p11-kit server" in r["token"][2]


def test_doctor_check_selection_and_list(store: Store) -> None:
    res = store.keyagent("doctor", "--check", "clock", "--check", "store")
    assert res.returncode == 0
    assert [ln.split()[1] for ln in res.stdout.splitlines()[:2]] == ["store", "clock"]
    res = store.keyagent("doctor", "--check", "nonsense")
    assert res.returncode == 2 and "unknown check" in res.stderr
    res = store.keyagent("doctor", "--list")
    assert res.returncode == 0 and res.stdout.split()[:3] == ["config", "module", "token"]
    res = store.keyagent("doctor", "--login", stdin="")  # no KEYAGENT_PIN, no terminal
    assert res.returncode == 2 and "KEYAGENT_PIN" in res.stderr


# ----- devices ------------------------------------------------------------------------------------------------------------

def test_devices_lists_softhsm_token(store: Store) -> None:
    store.keygen("01")
    store.write_config("01", MemoryKey(b"\x02" * 32).public_key())
    res = store.keyagent("devices")
    assert res.returncode == 0, res.stderr
    assert "USB smart-card readers and tokens:" in res.stdout
    assert f"token '{LABEL}'  serial {store.serial}" in res.stdout and "login required" in res.stdout
    doc = json.loads(store.keyagent("devices", "--json").stdout)
    tokens = [s["token"] for s in doc["pkcs11"]["slots"] if s["token"] and s["token"]["serial"]]
    assert [(t["label"], t["serial"], t["pin_count_low"], t["this_home"]) for t in tokens] == [
        (LABEL, store.serial, False, True)]
    assert doc["usb"]["error"] is None or "USB" in doc["usb"]["error"]
    # `devices list` is the same listing; --module overrides the home's module
    res = store.keyagent("devices", "list", "--module", str(store.root / "none.so"))
    assert res.returncode == 0 and "module unusable" in res.stdout and "does not exist" in res.stdout


def test_devices_without_module_or_libusb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    for mod in (usb.backend.libusb1, usb.backend.libusb0, usb.backend.openusb):
        monkeypatch.setattr(mod, "get_backend", lambda *a, **k: None)
    rc = main(["devices", "--home", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "USB unavailable: no USB backend: libusb is missing" in out and "libusb-1.0-0" in out
    assert "PKCS#11: no module configured" in out
    rc = main(["devices", "--json", "--home", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["usb"]["devices"] == [] and doc["usb"]["error"].startswith("no USB backend")


@pytest.fixture
def saved_subs() -> Iterator[None]:
    saved = dict(cmd_hardware._DEVICE_SUBS)
    yield
    cmd_hardware._DEVICE_SUBS.clear()
    cmd_hardware._DEVICE_SUBS.update(saved)


def test_devices_group_takes_subcommands_from_other_modules(saved_subs: None) -> None:
    calls: list[str] = []

    def record(what: str) -> int:
        calls.append(what)
        return 0

    def setup_approve(p: argparse.ArgumentParser) -> None:
        p.add_argument("device_id")
        p.set_defaults(func=lambda a: record(f"approve {a.device_id}"))

    # (names of our own: cmd_installations registers the real approve/disable through the same hook)
    cmd_hardware.add_devices_subcommand("t-approve", "approve one of our devices", setup_approve)  # before the build
    parser = build_parser()

    def setup_disable(p: argparse.ArgumentParser) -> None:
        p.add_argument("device_id")
        p.set_defaults(func=lambda a: record(f"disable {a.device_id}"))

    cmd_hardware.add_devices_subcommand("t-disable", "disable one", setup_disable)  # after the build
    for argv in (["devices", "t-approve", "abc"], ["devices", "t-disable", "xyz"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    assert calls == ["approve abc", "disable xyz"]
    assert parser.parse_args(["devices"]).func is parser.parse_args(["devices", "list"]).func
    assert {"t-approve", "t-disable"} <= set(cmd_hardware.devices_subcommands())
    with pytest.raises(ValueError):
        cmd_hardware.add_devices_subcommand("list", "clash", setup_disable)


# ----- install-udev ----------------------------------------------------------------------------------------------------

def test_install_udev_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-udev", "--print", "--group", "keyagent"]) == 0
    text = capsys.readouterr().out
    rules = udev.parse_rules(text)
    assert {r.get("GROUP").value for r in rules if r.get("GROUP")} == {"keyagent"}  # type: ignore[union-attr]
    assert main(["install-udev", "--print", "--group", 'x",RUN+="/bin/sh']) == 2
    assert "invalid group" in capsys.readouterr().err


def test_install_udev_needs_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["install-udev"]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "sudo keyagent install-udev" in err


def test_install_udev_into_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-udev", "--dest", str(tmp_path), "--group", "wheel"]) == 0
    out = capsys.readouterr().out
    assert f"installed {tmp_path / udev.RULES_FILENAME}" in out and "udevadm control --reload" in out
    assert 'GROUP="wheel"' in (tmp_path / udev.RULES_FILENAME).read_text()


# ----- doctor next to a running agent --------------------------------------------------------------------------------

def test_doctor_with_a_running_agent(tmp_path: Path) -> None:
    home, run = tmp_path / "home", tmp_path / "run"
    run.mkdir(mode=0o700)
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    pw.chmod(0o600)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(run), KEYAGENT_HOME=str(home))
    env.pop("KEYAGENT_SOCK", None)
    repo = str(Path(__file__).resolve().parents[2])

    def keyagent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=repo)

    init = keyagent("init", "--backend", "software", "--passphrase-file", str(pw), "--scrypt-n", "1024")
    assert init.returncode == 0, init.stderr
    started = keyagent("start", "--passphrase-file", str(pw))
    assert started.returncode == 0, started.stderr
    try:
        res = keyagent("doctor", "--json")
        doc = json.loads(res.stdout)
        status = {r["check"]: (r["status"], r["summary"]) for r in doc["results"]}
        assert res.returncode == 0, res.stdout
        assert status["config"][0] == "OK" and "backend software" in status["config"][1]
        assert status["identity"][0] == "OK"
        assert status["socket-dir"][0] == "OK" and "agent answers" in status["socket-dir"][1]
        assert status["store"][0] == "OK"
        assert status["module"][0] == status["token"][0] == "SKIP"
    finally:
        stopped = keyagent("stop")
    assert stopped.returncode == 0, stopped.stderr
    after = {r["check"]: r["status"] for r in json.loads(keyagent("doctor", "--json").stdout)["results"]}
    assert after["socket-dir"] == "OK"  # the agent removed its socket on the way out
