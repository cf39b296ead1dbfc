"""Length-prefixed JSON frames between the host and the jailed worker.

Stdlib only: this module is imported inside the jail too. Frames are a 4-byte big-endian length and
a UTF-8 JSON object. The host never trusts a frame: a frame that is too large or not a JSON object
means the worker is broken (or hostile) and gets replaced.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import time
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 4 * 1024 * 1024


class ProtocolError(Exception):
    """The other side sent something that is not a valid frame, or went away."""


class FrameTimeout(ProtocolError):
    """No complete frame arrived before the deadline."""


class ConnectionClosed(ProtocolError):
    """The other side closed its end (for a worker: it died)."""


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(len(data)) + data


def decode(payload: bytes) -> dict[str, Any]:
    """A frame's JSON object. ANY failure is a ProtocolError: deep nesting (RecursionError), a
    number with too many digits, invalid UTF-8, memory exhaustion - the host must never crash on
    what a worker sends, it replaces the worker."""
    try:
        message = json.loads(payload.decode("utf-8", "surrogatepass"))
    except (RecursionError, MemoryError) as exc:
        raise ProtocolError(f"malformed frame: {type(exc).__name__}") from None
    except Exception as exc:  # UnicodeDecodeError, ValueError (digits limit), anything else json raises
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def clean_text(value: object) -> str:
    """A string field of an untrusted frame, safe to print, store and encode as UTF-8 (JSON's
    \\ud800 escapes and surrogatepass decoding both produce lone surrogates): '' for non-strings."""
    if not isinstance(value, str):
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send one frame; `fds` ride along (SCM_RIGHTS) with its first byte."""
    data = encode(message)
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        data = data[sent:]
    if data:
        sock.sendall(data)


def recv_blocking(sock: socket.socket) -> dict[str, Any] | None:
    """Worker side: block for the next frame; None on a clean EOF between frames."""
    header = _recv_exact(sock, HEADER.size, allow_eof=True)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    payload = _recv_exact(sock, size, allow_eof=False)
    assert payload is not None
    return decode(payload)


def _recv_exact(sock: socket.socket, size: int, *, allow_eof: bool) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            if allow_eof and not chunks:
                return None
            raise ProtocolError("connection closed in the middle of a frame")
        chunks += chunk
    return bytes(chunks)


class FrameReader:
    """Host side: read frames with a deadline, optionally taking passed fds with the first bytes.

    Ancillary data is only accepted while `want_fds` is set (the hello frame, sent before any model
    code runs); afterwards plain recv() makes the kernel discard any fds the jail tries to pass.
    """

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._max = max_frame

    def read(self, deadline: float, want_fds: bool = False) -> tuple[dict[str, Any], list[int]]:
        fds: list[int] = []
        while True:
            frame = self._take_frame()
            if frame is not None:
                return decode(frame), fds
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout("no reply before the deadline")
            ready, _, _ = select.select([self._sock], [], [], remaining)
            if not ready:
                continue
            if want_fds and not fds:
                data, new_fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 4)
                fds.extend(new_fds)
            else:
                data = self._sock.recv(65536)
            if not data:
                for fd in fds:
                    _close_quietly(fd)
                raise ConnectionClosed("the worker closed the connection")
            self._buf += data

    def _take_frame(self) -> bytes | None:
        if len(self._buf) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buf)
        if size > self._max:
            raise ProtocolError(f"frame of {size} bytes exceeds {self._max}")
        end = HEADER.size + size
        if len(self._buf) < end:
            return None
        frame = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return frame


def _close_quietly(fd: int) -> None:
    import os

    with contextlib.suppress(OSError):
        os.close(fd)
