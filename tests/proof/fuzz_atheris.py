"""Coverage-guided fuzzing with atheris (libFuzzer for Python) for long local runs. Not needed in CI.

Set-up (once, in the project venv; atheris builds against the local clang/libFuzzer)::

    .venv/bin/pip install atheris

Runs (any libFuzzer flag works: ``-runs=N``, ``-max_total_time=S``, ``-jobs``/``-workers``, a corpus dir)::

    .venv/bin/python -m tests.proof.fuzz_atheris decoder -runs=2000000 corpus/decoder
    .venv/bin/python -m tests.proof.fuzz_atheris bundle  -max_total_time=3600 corpus/bundle
    .venv/bin/python -m tests.proof.fuzz_atheris request -runs=1000000
    .venv/bin/python -m tests.proof.fuzz_atheris agent   -runs=1000000 -rss_limit_mb=4096

Targets:

* ``decoder``: ``decode_protocol_message`` → a message (which must survive re-encoding) or MalformedMessage;
* ``bundle``: parse and verify a bundle → the genuine identity with unchanged signed content, or a typed
  ProtocolError (seeded with a real signed bundle, so mutations start from a valid signature);
* ``request``: the agent's frame codec (agent/framing.py) and ``Request`` decoding in process, as the server does
  them (frames, length prefixes, caps);
* ``agent``: every input is sent as-is to a live agent on its own connection; the agent process is not
  instrumented, so this one is libFuzzer-mutated but not coverage-guided. It checks liveness and that the
  answers are well-formed frames, and every 1000 inputs that a bystander connection still gets answers.
A property violation raises, which atheris reports as a crash with the input saved to ``crash-*``.
The pure-Python equivalent without atheris is ``python -m tests.proof.fuzz``.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.core.errors import ProtocolError
from tests.proof.fuzz import check_bundle, check_decoder

__all__ = ["TARGETS", "make_target", "main"]


def _decoder() -> Callable[[bytes], None]:
    return check_decoder


def _bundle() -> Callable[[bytes], None]:
    from tests.proof.common import Peer

    peer = Peer(Path(tempfile.mkdtemp(prefix="atheris-")))
    genuine = peer.bundle()
    identity = peer.identity

    def one(data: bytes) -> None:
        # half the inputs are the mutator's bytes as-is, half are spliced onto the genuine bundle's tail
        check_bundle(data if len(data) % 2 else genuine[: len(data) % len(genuine)] + data, genuine, identity)

    return one


def _request() -> Callable[[bytes], None]:
    from google.protobuf.message import DecodeError

    from agent.framing import FrameDecoder, FrameError
    from agent.pb.keyagent import agent_pb2 as pb

    def one(data: bytes) -> None:
        frames = FrameDecoder(max_frame=4096)  # the decoder the server's FrameReader runs
        frames.feed(data)
        while True:
            try:
                frame = frames.next()
            except FrameError:
                return
            if frame is None:
                return
            try:
                pb.Request.FromString(frame).WhichOneof("request")
            except (DecodeError, RuntimeWarning, ValueError):
                return

    return one


def _agent() -> Callable[[bytes], None]:
    from tests.proof.fuzz import LiveAgent, _defang, exchange

    target = LiveAgent()
    count = [0]

    def one(data: bytes) -> None:
        if len(data) > 4:  # keep the agent running: no stop/lock/unlock/release/rotate via an exact frame
            data = data[:4] + _defang(data[4:])
        exchange(target.agent.sock, data, 20.0)
        count[0] += 1
        if count[0] % 1000 == 0:
            target.health()

    return one


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "decoder": _decoder, "bundle": _bundle, "request": _request, "agent": _agent,
}


def make_target(name: str) -> Callable[[bytes], None]:
    """The one-input function of a target (plain Python: usable without atheris, e.g. in tests)."""
    return TARGETS[name]()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(__doc__)
        return 2
    try:
        atheris: Any = importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris (or use python -m tests.proof.fuzz)",
              file=sys.stderr)
        return 2
    name = argv[1]
    one = make_target(name)

    def test_one_input(data: bytes) -> None:
        try:
            one(data)
        except ProtocolError:
            raise AssertionError("a typed error escaped a checker that should have absorbed it") from None

    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.instrument_all()
    atheris.Setup([argv[0], *argv[2:]], test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
