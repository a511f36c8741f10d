"""The log caps, the line escaping, the refusal throttle and the connection slots as units (no agent process)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.daemon.admission import SlotPolicy, Slots, Verdict
from agent.daemon.audit import AuditLog
from agent.daemon.config import AgentConfig, ConfigError, Home, load_config
from agent.daemon.logcap import CappedFile, LineFormatter, cap, clip
from agent.daemon.peercred import PeerCred
from agent.daemon.throttle import Throttle

RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} keyagent\[\d+\] ")


# --- fields ------------------------------------------------------------------------------------------------------


def test_clip_escapes_line_breaks_and_caps_length() -> None:
    assert clip("/usr/bin/a\nFORGED\r\u2028x\\") == "/usr/bin/a\\x0aFORGED\\x0d\\u2028x\\\\"
    long = clip("i" * 200_000, 256)
    assert long == "i" * 256 + "...(+199744 chars)"
    assert "\n" not in clip("\n" * 10_000, 256) and len(clip("\n" * 10_000, 256)) < 300
    assert cap("a" * 300, 256).endswith("...(+44 chars)") and cap("short") == "short"


def test_a_newline_in_a_message_does_not_start_a_record() -> None:
    fmt = LineFormatter()
    rec = logging.LogRecord("keyagent.server", logging.WARNING, __file__, 1,
                            "refused exe=%s", ("/tmp/x\n2030-01-01 00:00:00,000 keyagent[1] INFO forged: hi",), None)
    try:
        raise ValueError("detail with\na line break")
    except ValueError:
        rec.exc_info = sys.exc_info()
    lines = fmt.format(rec).split("\n")
    assert RECORD_START.match(lines[0]) and "\\x0a2030-01-01" in lines[0]
    assert len(lines) > 1 and all(line.startswith("  | ") for line in lines[1:])  # traceback indented


# --- capped file -------------------------------------------------------------------------------------------------


def test_capped_file_rotates_and_never_passes_its_cap(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    f = CappedFile(path, max_bytes=1000, backups=2)
    for i in range(500):
        f.write(f"line {i:05d} {'x' * 40}\n".encode())
    f.write(b"y" * 5000 + b"\n")  # one line above the cap is cut to fit
    f.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all((tmp_path / n).stat().st_size <= 1000 for n in files)
    assert (tmp_path / "audit.log").read_bytes() == b"y" * 999 + b"\n"
    last = (tmp_path / "audit.log.1").read_text().splitlines()[-1]
    assert last.startswith("line 00499 ")  # the newest lines are the ones kept
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_capped_file_refuses_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit.log").symlink_to(target)
    with pytest.raises(OSError):
        CappedFile(tmp_path / "audit.log", max_bytes=1000, backups=1)


def test_capped_file_moves_a_following_stderr_descriptor(tmp_path: Path) -> None:
    """The daemon's stderr (fd 2 in production) follows the log file across a rotation."""
    path = tmp_path / "agent.log"
    follow = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        f = CappedFile(path, max_bytes=100, backups=1, follow_fd=follow)
        f.write(b"a" * 90 + b"\n")
        f.write(b"b" * 20 + b"\n")  # rotates
        os.write(follow, b"stray\n")
        f.close()
    finally:
        os.close(follow)
    assert path.read_bytes() == b"b" * 20 + b"\n" + b"stray\n"


def test_audit_log_caps_every_field_from_a_client_or_peer(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    audit.record(PeerCred(1, 2, 3), "/x\n" * 10_000, type="decrypt", result="ok",
                 detail="installation=" + "i" * 200_000, peer="p" * 100_000)
    audit.close()
    raw = (tmp_path / "audit.log").read_text()
    assert raw.count("\n") == 1 and len(raw) < 2048
    line = json.loads(raw)
    assert line["detail"].endswith("...(+199757 chars)") and line["exe"].startswith("/x\n/x\n")


_TEXT = st.one_of(st.sampled_from(["", "ok", "decrypt", "identity", "installation=abc", "02" + "ab" * 32]),
                  st.text(max_size=40), st.text(alphabet='"\\\n\x7f\u2028\x00abc', max_size=8),
                  st.just("i" * 300))
_VALUE = st.one_of(_TEXT, st.integers(-5, 10**12), st.booleans(), st.none(),
                   st.floats(allow_nan=True, allow_infinity=True), st.just(0.0), st.just(1e-05))


_PLAIN = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_FIELDS = ["type", "result", "ms", "conn", "key", "peer", "detail"]
_BASE: dict[str, object] = {"type": "decrypt", "result": "ok", "ms": 0.5, "conn": 3, "key": "identity", "peer": "02ab",
                            "detail": "x"}


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({"type": st.sampled_from(["decrypt", "status"]),
                              "result": st.sampled_from(["ok", "DENIED"]), "ms": st.floats(0, 1e6),
                              "conn": st.integers(0, 10**6), "key": _PLAIN, "peer": _PLAIN, "detail": _PLAIN}),
       st.dictionaries(st.sampled_from(_FIELDS), _VALUE, max_size=2),
       st.dictionaries(st.sampled_from(["rule", "force", "installation", "suppressed", "secret"]), _VALUE,
                       max_size=1),
       st.text(max_size=20))
@example(_BASE, {"ms": float("nan")}, {}, "/bin/x")
@example(_BASE, {"ms": float("inf")}, {}, "/bin/x")
@example(_BASE, {"conn": True}, {}, "/bin/x")
@example(_BASE, {"detail": 'a"b\\c\n'}, {}, "/bin/x")
@example(_BASE, {"peer": "\u00e9"}, {}, "/bin/x")
@example(_BASE, {"key": "k" * 300}, {}, "/bin/x")
@example(_BASE, {"detail": "d" * 300}, {}, "/bin/x")
def test_a_request_line_is_the_json_encoders_bytes(fields: dict[str, object], changed: dict[str, object],
                                                   extra: dict[str, object], exe: str) -> None:
    """The audit line's fast path (one format string for a request's usual fields) writes exactly what the JSON
    encoder writes, for any value a peer or client could put there (quotes, backslashes, control characters,
    non-ASCII, over-long text, NaN): else a crafted installation id could forge or break a line."""
    with tempfile.TemporaryDirectory() as d:
        audit = AuditLog(Path(d) / "audit.log", clock=lambda: "2026-01-01T00:00:00.000Z")
        cred = PeerCred(1, 2, 3)
        both = dict(fields, **changed, **extra)
        fast, slow = audit.line(cred, exe, **both), audit._encoded_line(cred, exe, both)
        audit.close()
    assert fast == slow
    assert json.loads(fast)["time"] == "2026-01-01T00:00:00.000Z"


def test_a_request_line_escapes_whatever_the_clock_says(tmp_path: Path) -> None:
    """The time goes through the same check as the fields (a clock is injectable: tests, another format)."""
    audit = AuditLog(tmp_path / "audit.log", clock=lambda: 'x"y\n')
    fast = audit.line(PeerCred(1, 2, 3), "/bin/x", **_BASE)
    audit.close()
    assert fast == audit._encoded_line(PeerCred(1, 2, 3), "/bin/x", dict(_BASE), 'x"y\n')
    assert json.loads(fast)["time"] == 'x"y\n'


def test_an_oversized_peer_installation_id_is_a_short_audit_line(tmp_path: Path) -> None:
    """Through the service: what a remote peer put in its message (its installation id) is capped in the log."""
    from agent.pb.keyagent import agent_pb2 as pb
    from backends.memory import MemoryKey
    from tests.daemon.test_agent_units import _answer, _ctx, _service

    class Result:
        payload, reply, confirm_ref, public, forward_secrecy = b"hi", b"", b"r", False, True
        installation_id = "i" * 200_000

    class Manager:
        installation_id = "me"

        def decrypt(self, sender: bytes, message: bytes) -> Result:
            return Result()

    svc = _service(tmp_path, Manager)
    req = pb.Request(decrypt=pb.DecryptRequest(sender_identity=MemoryKey.generate().public_key(), message=b"\x01"))
    resp = _answer(svc, req, _ctx())
    assert resp.WhichOneof("response") == "decrypt"
    raw = (tmp_path / "audit.log").read_text()
    assert raw.count("\n") == 1 and len(raw) < 1024, len(raw)
    assert json.loads(raw)["detail"].startswith("installation=iii")


# --- throttle ----------------------------------------------------------------------------------------------------


def test_throttle_logs_a_burst_per_key_then_reports_what_it_held_back() -> None:
    now = [0.0]
    t = Throttle(burst=3, window=10.0, clock=lambda: now[0])
    assert [t.allow(65534) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert t.allow(1000) == (True, 0)  # another uid has its own budget
    now[0] = 10.0
    assert t.allow(65534) == (True, 2)  # the next logged line says how many were not
    assert t.allow(65534) == (True, 0)


def test_throttle_table_stays_bounded() -> None:
    t = Throttle(burst=1, window=60.0, max_keys=100)
    for uid in range(10_000):
        t.allow(uid)
    assert len(t._keys) == 100


# --- slots -------------------------------------------------------------------------------------------------------


def test_an_allowed_uid_cannot_take_the_owners_reserved_slots() -> None:
    slots = Slots(SlotPolicy(max_connections=64, per_uid=64, owner_reserved=8))
    verdicts = [slots.take(65534, owner=False) for _ in range(80)]
    assert verdicts.count(Verdict.ADMIT) == 56 and verdicts[-1] is Verdict.FULL
    assert [slots.take(0, owner=True) for _ in range(9)] == [Verdict.ADMIT] * 8 + [Verdict.FULL]
    slots.give_back(0)
    assert slots.take(65534, owner=False) is Verdict.FULL  # a freed reserved slot stays the owner's
    assert slots.take(1000, owner=True) is Verdict.ADMIT


def test_per_uid_cap_applies_to_uids_other_than_the_owner() -> None:
    slots = Slots(SlotPolicy(max_connections=64, per_uid=16, owner_reserved=8))
    assert [slots.take(65534, owner=False) for _ in range(17)][-2:] == [Verdict.ADMIT, Verdict.UID_FULL]
    assert slots.take(65533, owner=False) is Verdict.ADMIT
    assert all(slots.take(0, owner=True) is Verdict.ADMIT for _ in range(30))
    assert slots.held_by(65534) == 16 and slots.total == 47
    slots.give_back(65534)
    assert slots.take(65534, owner=False) is Verdict.ADMIT
    with pytest.raises(ValueError):
        slots.give_back(4242)


def test_small_max_connections_still_admits_other_uids() -> None:
    slots = Slots(SlotPolicy(max_connections=2, per_uid=16, owner_reserved=8))
    assert slots.policy.reserved == 1
    assert [slots.take(65534, owner=False) for _ in range(2)] == [Verdict.ADMIT, Verdict.FULL]


# --- configuration -----------------------------------------------------------------------------------------------


def test_defaults_cut_idle_connections_reserve_owner_slots_and_cap_logs_under_8_mib() -> None:
    cfg = AgentConfig()
    assert cfg.idle_timeout > 0 and cfg.max_connections_per_uid < cfg.max_connections
    assert 0 < cfg.owner_reserved_connections <= cfg.max_connections // 2
    total = (cfg.audit_log_max_bytes * (cfg.audit_log_backups + 1)
             + cfg.agent_log_max_bytes * (cfg.agent_log_backups + 1))
    assert total < 8 * 1024 * 1024


def test_agent_json_sets_the_new_limits(tmp_path: Path) -> None:
    home = Home.at(tmp_path)
    home.config.write_text(json.dumps({"max_connections_per_uid": 4, "owner_reserved_connections": 2,
                                       "audit_log_max_bytes": 65536, "audit_log_backups": 0,
                                       "agent_log_max_bytes": 70000, "agent_log_backups": 3,
                                       "refusal_log_burst": 5, "refusal_log_window": 2.5}))
    cfg = load_config(home)
    assert (cfg.max_connections_per_uid, cfg.owner_reserved_connections, cfg.audit_log_max_bytes,
            cfg.audit_log_backups, cfg.agent_log_max_bytes, cfg.agent_log_backups, cfg.refusal_log_burst,
            cfg.refusal_log_window) == (4, 2, 65536, 0, 70000, 3, 5, 2.5)
    for bad in ({"audit_log_max_bytes": 10}, {"agent_log_backups": -1}, {"max_connections_per_uid": 0},
                {"refusal_log_window": 0}, {"owner_reserved_connections": "8"}):
        home.config.write_text(json.dumps(bad))
        with pytest.raises(ConfigError):
            load_config(home)
