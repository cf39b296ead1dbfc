"""The host's frame decoder against any bytes a worker could send (property-based, hypothesis).

Whatever arrives, reading a frame either returns a JSON object or raises ProtocolError (the host
then replaces the worker): never RecursionError, ValueError, MemoryError or anything else.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thyme_cli.sandbox.jail import wire as protocol

HOSTILE = [
    b"[" * 100_000,  # the RecursionError of the issue
    b"{" + b'"a":{' * 50_000,
    b"9" * 1_000_000,  # a number with a million digits
    b'{"n": ' + b"9" * 1_000_000 + b"}",
    b'{"n": 1e999999999}',
    b"\xff\xfe\xfd",  # invalid UTF-8
    b'"just a string"',
    b"[1, 2, 3]",
    b"null",
    b"",
    b'{"op": "result", "stdout": "\\ud800\\udfff\\ud800"}',
    b'{"a": 1' + b" " * 100,
    b"\xed\xa0\x80",  # an encoded lone surrogate
]


def read_all(data: bytes, *, deadline_s: float = 0.2) -> list[dict[str, object]]:
    """Feed `data` to a FrameReader through a real socket pair, then close; every frame it gives."""
    ours, theirs = socket.socketpair()

    def feed() -> None:
        try:
            theirs.sendall(data)
        except OSError:
            pass
        finally:
            theirs.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    reader = protocol.FrameReader(ours)
    frames = []
    try:
        while True:
            msg, fds = reader.read(time.monotonic() + deadline_s)
            assert fds == []
            assert isinstance(msg, dict)
            frames.append(msg)
    except protocol.ProtocolError:
        pass
    finally:
        ours.close()
        feeder.join(timeout=10)
    return frames


def frame(payload: bytes, size: int | None = None) -> bytes:
    return struct.pack(">I", len(payload) if size is None else size) + payload


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_raise_protocol_error_or_give_an_object(payload: bytes) -> None:
    try:
        msg = protocol.decode(payload)
    except protocol.ProtocolError as exc:
        assert str(exc)
        return
    assert isinstance(msg, dict)
    for value in msg.values():  # whatever got through is safe to store as UTF-8 once cleaned
        protocol.clean_text(value).encode("utf-8")


def test_the_frame_of_the_issue_is_refused_and_the_next_frame_still_decodes() -> None:
    ok = json.dumps({"op": "result", "step": 1}).encode()
    assert read_all(frame(b"[" * 100_000)) == []
    assert read_all(frame(ok) + frame(b"[" * 100_000)) == [{"op": "result", "step": 1}]


def test_huge_truncated_and_stalled_frames() -> None:
    assert read_all(struct.pack(">I", 0xFFFFFFFF) + b"x" * 1000) == []  # over the size cap
    assert read_all(frame(b'{"op": "res', size=100)) == []  # the worker stops mid-frame, then EOF
    assert read_all(b"\x00\x00") == []  # mid-header
    flood = b"\x00" * (8 * 1024 * 1024)  # zero-length frames are not objects
    assert read_all(flood) == []


def test_lone_surrogates_are_made_storable() -> None:
    msg = protocol.decode(b'{"stdout": "a\\ud800b"}')
    cleaned = protocol.clean_text(msg["stdout"])
    assert cleaned.encode("utf-8") and cleaned.startswith("a") and cleaned.endswith("b")
    assert protocol.clean_text(42) == "" and protocol.clean_text(None) == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    with contextlib.suppress(protocol.ProtocolError):
        assert isinstance(protocol.decode(data), dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            json_values.map(lambda v: frame(json.dumps(v).encode())),
            st.integers(0, 40).map(lambda n: frame(b"[" * 5000 * n)),
            st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
        ),
        max_size=6,
    )
)
def test_reader_survives_any_byte_stream(chunks: list[bytes]) -> None:
    """Any mix of valid frames, garbage, deep nesting and bogus headers: frames or ProtocolError."""
    read_all(b"".join(chunks), deadline_s=0.05)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_valid_objects_round_trip(value: object) -> None:
    message = {"op": "result", "value": value}
    data = protocol.encode(message)
    assert protocol.decode(data[4:]) == message
