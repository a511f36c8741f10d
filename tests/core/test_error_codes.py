"""Every error name travels as a real wire code, and every wire code has a name: no code falls through to INTERNAL
by a typo."""

from __future__ import annotations

from agent.core.error_codes import CodedError, ErrorCode
from agent.daemon.service import error_code
from agent.pb.keyagent import agent_pb2 as pb


def test_every_name_travels_as_a_wire_code() -> None:
    wire = set(pb.Error.Code.keys())
    assert {code.wire for code in ErrorCode} == wire
    assert {code.value for code in ErrorCode} - wire == {"BACKEND_ERROR", "KEY_EXISTS", "KEY_EXTRACTABLE",
                                                                 "UNSAFE_SOCKET_DIR", "AGENT_RUNNING", "UNSAFE_HOME"}


def test_a_coded_error_is_sent_as_its_wire_code() -> None:
    class Exists(CodedError):
        code = ErrorCode.KEY_EXISTS

    assert Exists.code == "KEY_EXISTS" and str(Exists.code) == "KEY_EXISTS"
    assert error_code(Exists("x")) == pb.Error.BAD_REQUEST
