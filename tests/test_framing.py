"""The one frame codec (agent/framing.py): frames split by length, bad frames refused, arbitrary bytes give
frames or a FrameError, and the server's blocking reader agrees with the decoder however the bytes arrive."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.framing import FrameError, FrameReader, decode_frames, encode_frame
from agent.pb.keyagent import agent_pb2 as pb

# --- frames -------------------------------------------------------------------------------------------------------


def test_frames_are_split_by_length() -> None:
    data = encode_frame(b"abc") + encode_frame(b"\x00" * 10)
    assert decode_frames(data, 64) == [b"abc", b"\x00" * 10]


@pytest.mark.parametrize("data", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x41" + b"a" * 65, b"\x00\x00", b"\x00\x00\x00\x05ab",
                                  b"\xff\xff\xff\xff"])
def test_bad_frames_raise(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frames(data, 64)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_frames_or_frame_error(data: bytes) -> None:
    try:
        frames = decode_frames(data, 64)
    except FrameError:
        return
    assert sum(len(f) + 4 for f in frames) == len(data)
    for f in frames:
        assert 1 <= len(f) <= 64
        try:  # whatever parses as a Request is dispatched by type; the rest closes the connection
            pb.Request.FromString(f).WhichOneof("request")
        except Exception as exc:
            assert type(exc).__name__ == "DecodeError"


# --- blocking frame reader (the server's connection threads) ------------------------------------------------------


def _reader_pair(**kw: float) -> tuple[FrameReader, socket.socket]:
    ours, theirs = socket.socketpair()
    opts = {"max_frame": 64, "frame_timeout": 1.0, "idle_timeout": 0.0}
    opts.update(kw)
    return FrameReader(ours, max_frame=int(opts["max_frame"]), frame_timeout=opts["frame_timeout"],
                       idle_timeout=opts["idle_timeout"]), theirs


def test_frame_reader_splits_pipelined_frames_and_ends_cleanly() -> None:
    reader, peer = _reader_pair()
    peer.sendall(encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"x" * 64))
    peer.shutdown(socket.SHUT_WR)
    assert [reader.read(), reader.read(), reader.read(), reader.read()] == [b"one", b"two", b"x" * 64, None]


@pytest.mark.parametrize("data, reason", [
    (b"\x00\x00\x00\x00", "outside"), (b"\x00\x00\x00\x41" + b"a" * 65, "outside"),
    (b"\x00\x00", "truncated"), (b"\x00\x00\x00\x05ab", "truncated"), (b"\xff\xff\xff\xff", "outside"),
])
def test_frame_reader_rejects_bad_frames(data: bytes, reason: str) -> None:
    reader, peer = _reader_pair()
    peer.sendall(data)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(FrameError, match=reason):
        reader.read()


def test_frame_reader_cuts_off_a_slow_frame_and_an_idle_peer() -> None:
    reader, peer = _reader_pair(frame_timeout=0.05)
    peer.sendall(b"\x00\x00")  # half a length, then nothing
    with pytest.raises(FrameError, match="frame timeout"):
        reader.read()
    idle, peer2 = _reader_pair(idle_timeout=0.05)
    assert idle.read() is None  # nothing at all within the idle limit: hang up
    peer.close()
    peer2.close()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_frame_reader_agrees_with_the_whole_stream_decoder(data: bytes, chunk: int) -> None:
    reader, peer = _reader_pair()
    for i in range(0, len(data), chunk):  # arbitrary segmentation must not matter
        peer.sendall(data[i:i + chunk])
    peer.shutdown(socket.SHUT_WR)
    got: list[bytes] = []
    sync_error = False
    try:
        while (frame := reader.read()) is not None:
            got.append(frame)
    except FrameError:
        sync_error = True
    peer.close()
    try:
        expected = decode_frames(data, 64)
        assert not sync_error and got == expected
    except FrameError:
        assert sync_error
