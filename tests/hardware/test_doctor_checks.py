"""The doctor's framework and the checks that need no token: each gives OK/WARN/FAIL with a fix when it should."""

from __future__ import annotations

import importlib
import json
import os
import socket
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from agent.hardware import doctor, udev
from agent.hardware.doctor import CheckResult, DoctorContext, Status
from backends.pkcs11.inventory import TokenInfo
from backends.memory import MemoryKey

NOW = 1_790_000_000.0  # 2026-09-21, a sane wall clock


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(doctor._REGISTRY)
    yield
    doctor._REGISTRY.clear()
    doctor._REGISTRY.update(saved)


def ctx_for(home: Path, tmp_path: Path, **kw: object) -> DoctorContext:
    return DoctorContext(home=str(home), socket_path=str(tmp_path / "run" / "keyagent" / "agent.sock"),
                         now=lambda: NOW, rules_dirs=(str(tmp_path / "rules"),), **kw)  # type: ignore[arg-type]


def one(ctx: DoctorContext, name: str) -> CheckResult:
    (res,) = doctor.run_checks(ctx, only=[name])
    return res.result


def write_config(home: Path, doc: dict[str, object], mode: int = 0o600) -> None:
    path = home / "config.json"
    path.write_text(json.dumps(doc))
    path.chmod(mode)


IK = MemoryKey(b"\x01" * 32).public_key().hex()
SOFTWARE = {"version": 1, "backend": "software", "identity_public_key": IK, "software": {"key_file": "identity.key"}}


def pkcs11_config(module: str, **extra: object) -> dict[str, object]:
    return {"version": 1, "backend": "pkcs11", "identity_public_key": IK,
            "pkcs11": {"module": module, "token": "label:t", "token_serial": "1", "namespace": "00" * 8,
                       "identity_id": "01", **extra}}


# ----- framework -----------------------------------------------------------------------------------------------------

def test_builtin_checks_are_registered_in_order() -> None:
    names = doctor.registered_checks()
    assert names[:11] == ["config", "module", "token", "pin", "identity", "socket-dir", "store", "anchor", "udev",
                          "pcscd", "clock"]


def test_registry_is_extensible_and_a_crash_is_a_fail(home: Path, tmp_path: Path, clean_registry: None) -> None:
    doctor.register_check("zz-ok", lambda c: CheckResult(Status.OK, "fine"), order=1000)

    @doctor.check("zz-crash", order=1001, title="crashes")
    def crash(c: DoctorContext) -> CheckResult:
        raise RuntimeError("boom")

    results = doctor.run_checks(ctx_for(home, tmp_path), only=["zz-ok", "zz-crash"])
    assert [(r.name, r.result.status) for r in results] == [("zz-ok", Status.OK), ("zz-crash", Status.FAIL)]
    # the one error style: the code and what happened, no Python class name; a bug's fix says to report it
    assert results[1].result.summary == "CHECK_CRASHED: the check could not finish: boom"
    assert "RuntimeError" not in results[1].result.summary and "bug" in (results[1].result.fix or "")
    assert results[1].to_json()["code"] == "CHECK_CRASHED" and results[0].to_json()["code"] is None
    assert results[1].title == "crashes"
    assert doctor.exit_code(results) == 1 and doctor.exit_code(results[:1]) == 0
    doctor.unregister_check("zz-crash")
    assert "zz-crash" not in doctor.registered_checks()
    with pytest.raises(ValueError, match="unknown check"):
        doctor.run_checks(ctx_for(home, tmp_path), only=["zz-crash"])
    with pytest.raises(ValueError):
        doctor.register_check("has space", lambda c: CheckResult(Status.OK, "x"))


def test_warn_and_fail_need_a_fix() -> None:
    with pytest.raises(ValueError):
        CheckResult(Status.WARN, "no fix")
    with pytest.raises(ValueError):
        CheckResult(Status.FAIL, "no fix", "")
    assert CheckResult(Status.OK, "fine").fix is None


def test_a_module_registers_checks_by_importing_check(home: Path, tmp_path: Path, clean_registry: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "extra_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "doctor_checks.py").write_text(textwrap.dedent("""
        from agent.hardware.doctor import CheckResult, Status, check

        @check("from-plugin", order=5)
        def _c(ctx):
            return CheckResult(Status.WARN, "plugin says hi", "nothing to fix")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("extra_pkg.doctor_checks")  # whoever imports doctor can add checks; no registry of names
    results = doctor.run_checks(ctx_for(home, tmp_path), only=["from-plugin"])
    assert [(r.name, r.result.status, r.result.summary) for r in results] == [
        ("from-plugin", Status.WARN, "plugin says hi")]
    sys.modules.pop("extra_pkg.doctor_checks", None)
    sys.modules.pop("extra_pkg", None)


def test_format_and_json(home: Path, tmp_path: Path) -> None:
    results = doctor.run_checks(ctx_for(home, tmp_path), only=["config", "clock"])
    text = doctor.format_results(results)
    lines = text.splitlines()
    assert lines[0].startswith("FAIL  config") and lines[1].strip().startswith("fix: run `keyagent init")
    assert lines[2].startswith("OK    clock")
    assert lines[-1] == "1 ok, 0 warn, 1 fail, 0 skipped"
    assert results[0].to_json()["status"] == "FAIL" and results[0].to_json()["fix"]


# ----- config ----------------------------------------------------------------------------------------------------------

def test_config_check(home: Path, tmp_path: Path) -> None:
    missing = one(ctx_for(tmp_path / "nope", tmp_path), "config")
    assert missing.status is Status.FAIL and "does not exist" in missing.summary
    assert one(ctx_for(home, tmp_path), "config").status is Status.FAIL  # no config.json
    (home / "config.json").write_text("{not json")
    assert "not valid JSON" in one(ctx_for(home, tmp_path), "config").summary
    write_config(home, {"backend": "tape"})
    assert one(ctx_for(home, tmp_path), "config").status is Status.FAIL
    write_config(home, {"version": 1, "backend": "pkcs11", "identity_public_key": IK, "pkcs11": {}})
    assert "pkcs11.module is missing" in one(ctx_for(home, tmp_path), "config").summary
    write_config(home, dict(SOFTWARE, identity_public_key="02" + "00" * 32))  # not a point: the daemon refuses it
    assert "identity_public_key" in one(ctx_for(home, tmp_path), "config").summary
    write_config(home, dict(SOFTWARE, version=2))
    assert one(ctx_for(home, tmp_path), "config").status is Status.FAIL
    write_config(home, SOFTWARE, mode=0o644)
    res = one(ctx_for(home, tmp_path), "config")
    assert res.status is Status.WARN and res.fix == f"chmod 600 {home / 'config.json'}"
    write_config(home, SOFTWARE)
    assert one(ctx_for(home, tmp_path), "config").status is Status.OK
    home.chmod(0o755)
    res = one(ctx_for(home, tmp_path), "config")
    assert res.status is Status.WARN and res.fix and res.fix.startswith(f"chmod 700 {home}")
    home.chmod(0o700)


def test_token_checks_skip_without_pkcs11(home: Path, tmp_path: Path) -> None:
    write_config(home, SOFTWARE)
    statuses = {r.name: r.result.status for r in doctor.run_checks(ctx_for(home, tmp_path))}
    assert statuses["module"] is statuses["token"] is statuses["pin"] is Status.SKIP
    assert statuses["identity"] is Status.FAIL  # the software key file is missing


def test_software_key_file(home: Path, tmp_path: Path) -> None:
    write_config(home, SOFTWARE)
    key = home / "identity.key"
    key.write_text("{}")
    key.chmod(0o640)
    ctx = ctx_for(home, tmp_path)
    doctor.run_checks(ctx, only=["config"])
    res = one(ctx, "identity")
    assert res.status is Status.FAIL and res.fix == f"chmod 600 {key}"
    key.chmod(0o600)
    assert one(ctx, "identity").status is Status.OK


# ----- PIN flags -------------------------------------------------------------------------------------------------------

LOGIN_REQUIRED, USER_PIN_INITIALIZED, TOKEN_INITIALIZED = 0x4, 0x8, 0x400
COUNT_LOW, FINAL_TRY, LOCKED, TO_BE_CHANGED = 0x10000, 0x20000, 0x40000, 0x80000
BASE = LOGIN_REQUIRED | USER_PIN_INITIALIZED | TOKEN_INITIALIZED


@pytest.mark.parametrize(("flags", "status", "words"), [
    (BASE, Status.OK, "no failed tries"),
    (BASE | COUNT_LOW, Status.WARN, "COUNT_LOW"),
    (BASE | COUNT_LOW | FINAL_TRY, Status.FAIL, "FINAL_TRY"),
    (BASE | LOCKED, Status.FAIL, "locked"),
    (BASE | TO_BE_CHANGED, Status.WARN, "changed"),
    (LOGIN_REQUIRED | TOKEN_INITIALIZED, Status.FAIL, "not initialised"),
])
def test_pin_state(home: Path, tmp_path: Path, flags: int, status: Status, words: str) -> None:
    ctx = ctx_for(home, tmp_path)
    ctx.facts["token"] = TokenInfo(label="t", serial="1", manufacturer="m", model="x", flags=flags)
    res = one(ctx, "pin")
    assert res.status is status and words in res.summary
    if status is not Status.OK:
        assert res.fix
    assert one(ctx_for(home, tmp_path), "pin").status is Status.SKIP  # no token fact: nothing to say


# ----- socket directory ------------------------------------------------------------------------------------------------

def test_socket_dir(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_for(home, tmp_path)
    sockdir = tmp_path / "run" / "keyagent"
    assert one(ctx, "socket-dir").status is Status.OK  # absent: the agent creates it
    sockdir.mkdir(parents=True, mode=0o755)
    sockdir.chmod(0o755)
    res = one(ctx, "socket-dir")
    assert res.status is Status.FAIL and "0755" in res.summary and res.fix == f"chmod 700 {sockdir}"
    sockdir.chmod(0o700)
    assert one(ctx, "socket-dir").status is Status.OK
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sockdir / "agent.sock"))
    try:
        (sockdir / "agent.sock").chmod(0o666)
        assert one(ctx, "socket-dir").status is Status.FAIL
        (sockdir / "agent.sock").chmod(0o600)
        res = one(ctx, "socket-dir")
        assert res.status is Status.WARN and "stale" in res.summary  # bound, but nobody listens
        s.listen(1)
        res = one(ctx, "socket-dir")
        assert res.status is Status.OK and "0600" in res.summary and "answers" in res.summary
    finally:
        s.close()
    monkeypatch.setattr(os, "getuid", lambda: 54321)  # the directory now belongs to "someone else"
    res = one(ctx, "socket-dir")
    assert res.status is Status.FAIL and "not by you" in res.summary


def test_socket_dir_symlink_and_file(home: Path, tmp_path: Path) -> None:
    ctx = ctx_for(home, tmp_path)
    (tmp_path / "run").mkdir()
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "run" / "keyagent").symlink_to(real)
    assert "not a real directory" in one(ctx, "socket-dir").summary
    (tmp_path / "run" / "keyagent").unlink()
    (tmp_path / "run" / "keyagent").mkdir(mode=0o700)
    (tmp_path / "run" / "keyagent" / "agent.sock").write_text("")
    assert one(ctx, "socket-dir").summary.endswith("is not a socket")


def test_socket_dir_default_follows_the_daemon(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.paths import socket_path_for

    run = tmp_path / "xdg"
    run.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    (run / "keyagent").mkdir(mode=0o777)
    (run / "keyagent").chmod(0o777)
    assert socket_path_for(str(home)).parent == run / "keyagent"
    res = one(DoctorContext(home=str(home), now=lambda: NOW), "socket-dir")
    assert res.status is Status.FAIL and str(run / "keyagent") in res.summary


# ----- store -------------------------------------------------------------------------------------------------------------

def test_store(home: Path, tmp_path: Path) -> None:
    ctx = ctx_for(home, tmp_path)
    assert one(ctx, "store").status is Status.OK
    db = home / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    db.chmod(0o600)
    res = one(ctx, "store")
    assert res.status is Status.FAIL and "SQLite" in res.summary
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (k TEXT)")
    conn.commit()
    conn.close()
    db.chmod(0o644)
    res = one(ctx, "store")
    assert res.status is Status.WARN and res.fix == f"chmod 600 {db}"
    db.chmod(0o600)
    res = one(ctx, "store")
    assert res.status is Status.OK and "1 table" in res.summary


# ----- udev ---------------------------------------------------------------------------------------------------------------

def test_udev(home: Path, tmp_path: Path) -> None:
    ctx = ctx_for(home, tmp_path)
    assert one(ctx, "udev").status is Status.OK  # nothing configured: nothing needed
    write_config(home, pkcs11_config("/usr/lib/softhsm/libsofthsm2.so"))
    doctor.run_checks(ctx, only=["config"])
    res = one(ctx, "udev")
    assert res.status is Status.OK and "libsofthsm2.so has no USB device" in res.summary
    write_config(home, pkcs11_config("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"))
    doctor.run_checks(ctx, only=["config"])
    res = one(ctx, "udev")
    assert res.status is Status.WARN and res.fix and "install-udev" in res.fix
    rules = tmp_path / "rules"
    rules.mkdir()
    udev.install_rules("wheel", str(rules))
    res = one(ctx, "udev")
    assert res.status is Status.OK and "group wheel" in res.summary
    path = rules / udev.RULES_FILENAME
    path.write_text(path.read_text().replace('ATTR{idProduct}=="4230"', 'ATTR{idProduct}=="4231"'))
    assert one(ctx, "udev").status is Status.WARN
    path.write_text("this is not a rule\n")
    assert one(ctx, "udev").status is Status.FAIL


# ----- clock ---------------------------------------------------------------------------------------------------------------

def test_clock(home: Path, tmp_path: Path) -> None:
    assert one(ctx_for(home, tmp_path), "clock").status is Status.OK
    for bad in (0.0, 1_600_000_000.0, 5_000_000_000.0):
        ctx = DoctorContext(home=str(home), now=lambda b=bad: b)  # type: ignore[misc]
        res = one(ctx, "clock")
        assert res.status is Status.FAIL and res.fix and "ntp" in res.fix.lower()
    f = home / "state.db"
    f.write_bytes(b"")
    os.utime(f, (NOW + 3600, NOW + 3600))  # written an hour "after" now: the clock went backwards
    res = one(ctx_for(home, tmp_path), "clock")
    assert res.status is Status.FAIL and "backwards" in res.summary
    os.utime(f, (NOW + 60, NOW + 60))  # within the tolerance (coarse clocks, NTP slew)
    assert one(ctx_for(home, tmp_path), "clock").status is Status.OK


def test_pcscd(home: Path, tmp_path: Path) -> None:
    sock = tmp_path / "pcscd.comm"
    ctx = ctx_for(home, tmp_path, pcscd_socket=str(sock))
    assert one(ctx, "pcscd").status is Status.SKIP  # nothing configured
    write_config(home, pkcs11_config("/usr/lib/softhsm/libsofthsm2.so"))
    doctor.run_checks(ctx, only=["config"])
    assert one(ctx, "pcscd").status is Status.SKIP  # a software token needs no reader
    write_config(home, pkcs11_config("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"))
    doctor.run_checks(ctx, only=["config"])
    res = one(ctx, "pcscd")
    assert res.status is Status.WARN and res.fix and "pcscd" in res.fix
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    try:
        assert "nothing answers" in one(ctx, "pcscd").summary
        listener.listen(1)
        assert one(ctx, "pcscd").status is Status.OK
    finally:
        listener.close()
