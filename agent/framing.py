"""The one frame codec of the socket API, run by the client, the server and the fuzz harnesses alike.

A frame is a 4-byte big-endian length and one protobuf message (ssh-agent's framing without the type byte: the
type is the Request/Response oneof). A length of 0 or above the cap breaks the framing: the reader raises
:class:`FrameError` and the connection is closed. :class:`FrameDecoder` holds the rules and keeps what follows a
frame (a pipelining client's next request); :class:`FrameReader` drives it from a blocking socket with the
server's two clocks: ``frame_timeout`` from a frame's first byte to its last (slow-loris) and ``idle_timeout``
between frames (0 = none).
"""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["MAX_FRAME", "FrameError", "FrameDecoder", "FrameReader", "encode_frame", "decode_frames"]

#: ssh-agent's AGENT_MAX_LEN: large enough for any bundle or 1:1 message, small enough to bound memory per client.
MAX_FRAME = 256 * 1024

_LEN = struct.Struct(">I")
_RECV = 1 << 16


class FrameError(Exception):
    """A frame that breaks the framing rules; the connection is closed."""


def encode_frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, :meth:`next` takes whole frames out."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        #: What follows the frames taken so far (read-only outside: empty means "no frame pending", which a
        #: server can test without a call before asking :meth:`next`)
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    @property
    def pending(self) -> bool:
        """True while bytes of an unfinished (or not yet taken) frame are held."""
        return bool(self.buf)

    @property
    def buffered(self) -> int:
        """Bytes held (what follows the frames taken so far)."""
        return len(self.buf)

    def next(self) -> bytes | None:
        """The next whole frame, or None until more bytes arrive. Raises FrameError on a bad length."""
        buf = self.buf
        if len(buf) < 4:
            return None
        (length,) = _LEN.unpack_from(buf)
        if length == 0 or length > self.max_frame:
            raise FrameError(f"frame length {length} outside 1..{self.max_frame}")
        if len(buf) < 4 + length:
            return None
        frame = bytes(buf[4:4 + length])
        del buf[:4 + length]
        return frame


def decode_frames(data: bytes, max_frame: int) -> list[bytes]:
    """Every frame of a complete stream (its end is the peer hanging up); FrameError if any is bad or cut short."""
    decoder = FrameDecoder(max_frame)
    decoder.feed(data)
    out: list[bytes] = []
    while (frame := decoder.next()) is not None:
        out.append(frame)
    if decoder.pending:
        raise FrameError("truncated frame")
    return out


class FrameReader:
    """Blocking frame reader for one server connection thread.

    Reads up to 64 KiB per ``recv`` and keeps what follows a frame (a pipelining client's next request).
    """

    def __init__(self, sock: socket.socket, *, max_frame: int, frame_timeout: float, idle_timeout: float) -> None:
        self._sock = sock
        self._frames = FrameDecoder(max_frame)
        self._frame_timeout = frame_timeout
        self._idle_timeout = idle_timeout

    def read(self) -> bytes | None:
        """One frame; None at a clean end of stream (or an idle timeout). Raises FrameError to close."""
        if not self._frames.pending:
            self._sock.settimeout(self._idle_timeout if self._idle_timeout > 0 else None)
            try:
                data = self._sock.recv(_RECV)
            except TimeoutError:
                return None  # idle too long: hang up like a clean close
            if not data:
                return None  # closed between frames: the normal way to hang up
            self._frames.feed(data)
        deadline = time.monotonic() + self._frame_timeout
        while True:
            frame = self._frames.next()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrameError("frame timeout")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(_RECV)
            except TimeoutError as exc:
                raise FrameError("frame timeout") from exc
            if not data:
                raise FrameError("truncated frame")
            self._frames.feed(data)
