"""Fuzzing in CI (hypothesis, modest example counts): a live agent fed random and mutated frames and
protobuf requests, and the in-process ProtocolMessage decoder and bundle verifier. The long runs are
``python -m tests.proof.fuzz --target agent|decoder|bundle --inputs N`` and ``tests/proof/fuzz_atheris.py``."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.errors import MalformedMessage
from agent.core.wire import decode_bundle, encode
from tests.proof.common import Peer, rss_kib
from tests.proof.fuzz import LiveAgent, check_bundle, check_decoder, make_input, mutate

_LIVE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
_FAST = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveAgent]:
    target = LiveAgent()
    try:
        yield target
    finally:
        target.close()


def _still_fine(live: LiveAgent) -> None:
    live.health()  # alive, the bystander connection answers
    growth_mib = (rss_kib(live.agent.pid) - live.stats.rss_start_kib) / 1024
    assert growth_mib < 64, f"agent RSS grew by {growth_mib:.0f} MiB"


@_LIVE
@given(rng=st.randoms(use_true_random=False))
def test_mutated_and_generated_requests_never_crash_or_hang_the_agent(live: LiveAgent, rng: random.Random) -> None:
    data = make_input(rng, live.seeds, live.max_frame)
    live.run_one(data, timeout=20.0)  # raises on a hang or a malformed response stream
    _still_fine(live)


@_LIVE
@given(body=st.binary(max_size=400), length=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_raw_frames_never_crash_or_hang_the_agent(live: LiveAgent, body: bytes, length: int | None) -> None:
    from tests.proof.fuzz import _defang

    body = _defang(body)
    header = struct.pack(">I", len(body) if length is None else length)
    responses = live.run_one(header + body, timeout=20.0)
    if length is not None and (length == 0 or length > live.max_frame):
        assert responses == []  # a bad length closes without an answer
    _still_fine(live)


def test_fuzzing_reached_the_handlers(live: LiveAgent) -> None:
    """The generators are not just bouncing off the framing: requests got real answers and typed errors."""
    rng = random.Random(1)
    while live.stats.inputs < 300:  # also when this test runs alone
        live.run_one(make_input(rng, live.seeds, live.max_frame), timeout=20.0)
    stats = live.stats
    assert stats.inputs >= 300 and stats.responses > stats.inputs // 4, stats
    assert "BAD_REQUEST" in stats.errors_by_code, stats
    assert stats.responses - sum(stats.errors_by_code.values()) > 0, stats  # some requests succeeded
    assert "INTERNAL" not in live.stats.errors_by_code, live.stats.errors_by_code


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[bytes], bytes, bytes]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    alice, bob = Peer(root), Peer(root)
    try:
        hello = alice.mgr.encrypt(bob.identity, b"hello", bob.bundle()).message
        reply = bob.mgr.encrypt(alice.identity, b"back").message
        yield [hello, reply, bob.bundle()], bob.bundle(), bob.identity
    finally:
        alice.close()
        bob.close()


@_FAST
@given(data=st.binary(max_size=600))
def test_decoder_random_bytes_parse_or_raise_malformed(data: bytes) -> None:
    check_decoder(data)


@_FAST
@given(rng=st.randoms(use_true_random=False))
def test_decoder_mutated_messages_parse_or_raise_malformed(corpus: tuple[list[bytes], bytes, bytes],
                                                           rng: random.Random) -> None:
    seeds = corpus[0]
    check_decoder(mutate(rng.choice(seeds), rng, seeds))


@_FAST
@given(rng=st.randoms(use_true_random=False))
def test_bundle_verifier_mutants_raise_typed_errors_and_never_verify_altered_content(
        corpus: tuple[list[bytes], bytes, bytes], rng: random.Random) -> None:
    seeds, genuine, identity = corpus
    check_bundle(mutate(genuine, rng, seeds), genuine, identity)


def test_bundle_checker_catches_a_forgery_and_accepts_the_genuine(corpus: tuple[list[bytes], bytes, bytes]) -> None:
    _, genuine, identity = corpus
    check_bundle(genuine, genuine, identity)  # the genuine bundle verifies to its identity
    b = decode_bundle(genuine)
    (iid,) = b.signed_pre_keys
    b.signed_pre_keys[iid].protocol_version += 1  # not signed upstream: still verifies, and that is allowed
    check_bundle(encode(b), genuine, identity)
    with pytest.raises(AssertionError):
        check_bundle(genuine, genuine, b"\x02" + b"\x11" * 32)  # claims another identity: the checker objects


def test_decoder_checker_only_accepts_malformed_message() -> None:
    with pytest.raises(MalformedMessage):
        from agent.core.wire import decode_protocol_message
        decode_protocol_message(b"\xff\xff")
    check_decoder(b"\xff\xff")  # the checker treats that as the expected outcome


@pytest.mark.parametrize("name", ["decoder", "bundle", "request"])
def test_atheris_targets_run_as_plain_functions(name: str) -> None:
    """The atheris harness's targets (fuzz_atheris.py) work without atheris: a smoke run over random inputs."""
    from tests.proof.fuzz_atheris import make_target

    one = make_target(name)
    rng = random.Random(name)
    for _ in range(300):
        one(rng.randbytes(rng.randint(0, 200)))
    one(b"")
    one(struct.pack(">I", 2) + b"\x5a\x00")  # a complete frame holding a status request
