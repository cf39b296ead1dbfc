"""Read a few metadata keys from a GGUF header, without llama.cpp.

Used before loading so that a wrong file gets a clear error (llama.cpp only logs and returns
NULL), and to learn the projector type, which decides how images are sized. Reads the header
only; never the tensors.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from thyme_cli.errors import EngineError

GGUF_MAGIC = b"GGUF"

# GGUF value types -> struct format of one scalar (strings and arrays handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

Value = int | float | bool | str | None


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _scalar(f: BinaryIO, vtype: int) -> int | float | bool:
    fmt = _SCALARS[vtype]
    value: int | float | bool = struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    return value


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, n).decode("utf-8", "replace")


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        (n,) = struct.unpack("<Q", _read(f, 8))
        f.seek(n, 1)
    elif vtype == _ARRAY:
        item_type, count = struct.unpack("<IQ", _read(f, 12))
        if item_type in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item_type)
    elif vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_keys(path: Path, keys: Iterable[str], *, what: str = "model") -> dict[str, Value]:
    """The scalar/string values of ``keys`` (None where absent); EngineError if not a GGUF file."""
    wanted = set(keys)
    found: dict[str, Value] = dict.fromkeys(wanted)
    if not path.exists():
        raise EngineError(f"{what} file not found: {path}", hint="check the path, or download the model again")
    if path.is_dir():
        raise EngineError(f"{what} path is a directory, not a GGUF file: {path}")
    try:
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise EngineError(
                    f"{what} file is not a GGUF file: {path}",
                    hint="llama.cpp needs .gguf files; convert safetensors checkpoints first",
                )
            _version, _n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
            for _ in range(n_kv):
                if not wanted:
                    break
                key = _string(f)
                (vtype,) = struct.unpack("<I", _read(f, 4))
                if key in wanted:
                    wanted.discard(key)
                    if vtype == _STRING:
                        found[key] = _string(f)
                        continue
                    if vtype in _SCALARS:
                        found[key] = _scalar(f, vtype)
                        continue
                _skip_value(f, vtype)
    except (EOFError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise EngineError(
            f"{what} file is truncated or corrupt: {path} ({e or 'unexpected end'})", hint="download it again"
        ) from None
    except OSError as e:
        raise EngineError(f"cannot read {what} file {path}: {e.strerror}") from None
    return found


def read_tensor_types(path: Path) -> dict[str, int]:
    """Every tensor's name -> ggml type id, from the header (EngineError if the file is bad)."""
    try:
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise EngineError(f"not a GGUF file: {path}")
            _version, n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
            for _ in range(n_kv):
                _string(f)
                (vtype,) = struct.unpack("<I", _read(f, 4))
                _skip_value(f, vtype)
            types: dict[str, int] = {}
            for _ in range(n_tensors):
                name = _string(f)
                (n_dims,) = struct.unpack("<I", _read(f, 4))
                f.seek(8 * n_dims, 1)
                ttype, _offset = struct.unpack("<IQ", _read(f, 12))
                types[name] = ttype
            return types
    except (EOFError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise EngineError(f"GGUF file is truncated or corrupt: {path} ({e or 'unexpected end'})") from None
    except OSError as e:
        raise EngineError(f"cannot read GGUF file {path}: {e.strerror}") from None
