"""Does llama.cpp's fast CPU path for quantized weights (extra buffer types) run on this CPU?

Asked once per llama.cpp build and CPU, in a child process that loads a tiny quantized model: if the
child dies by a signal, models load without extra buffer types (or with only CPU_REPACK for the Q4
layers where that runs). See docs/engine.md ("Quantized models on CPUs whose fast path crashes").

``python -m thyme_cli.engine.llama.cpu_probe child MODEL extra|plain|repack`` is the child.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENV_OVERRIDE = "THYME_EXTRA_BUFTS"
ENV_CACHE_DIR = "THYME_CACHE_DIR"
PROBE_TIMEOUT_S = 180.0
_CACHE_VERSION = 2

# ggml type id -> (elements per block, bytes per block, byte offsets of fp16 scales in a block).
_Q4_0, _Q8_0, _Q4_K, _Q6_K, _F32 = 2, 8, 12, 14, 0
_BLOCKS: dict[int, tuple[int, int, tuple[int, ...]]] = {
    _Q4_0: (32, 18, (0,)),  # d, 16 bytes of nibbles
    _Q8_0: (32, 34, (0,)),  # d, 32 int8
    _Q4_K: (256, 144, (0, 2)),  # d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    _Q6_K: (256, 210, (208,)),  # ql[128], qh[64], int8 scales[16], d
}
_N_EMBD, _N_FF, _N_VOCAB, _N_HEAD = 256, 512, 256, 4
# Tokens evaluated at once: more than one AMX tile row (16), as a real prompt is.
_PROMPT_TOKENS = 64


@dataclass(frozen=True)
class ProbeResult:
    """What the engine will do, and why."""

    extra_bufts: bool  # load models with llama.cpp's extra buffer types
    source: str  # "env", "cache", "probe" or "inconclusive"
    detail: str  # one line for people (doctor, --verbose)
    crashed: str | None = None  # the signal that killed the child with extra buffer types, if one did
    plain_ok: bool | None = None  # whether the child without extra buffer types then ran (after a crash)
    repack_ok: bool | None = None  # whether only the CPU_REPACK buffer type, for Q4_0 / Q4_K layers, ran then


def cache_dir() -> Path:
    """THYME_CACHE_DIR, else THYME_HOME/cache, else the platform's per-user cache dir."""
    if value := os.environ.get(ENV_CACHE_DIR):
        return Path(value).expanduser()
    if home := os.environ.get("THYME_HOME"):
        return Path(home).expanduser() / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("thyme", appauthor=False))


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return " ".join(sorted(set(line.split(":", 1)[-1].split())))
    return ""


def _library_id() -> str:
    """The llama.cpp build in use: the shared libraries' names, sizes and modification times."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return "no-llama_cpp"
    parts = []
    for loc in spec.submodule_search_locations:
        lib = Path(loc) / "lib"
        for f in sorted(lib.glob("*")) if lib.is_dir() else []:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(parts) or "no-lib"


def cache_key() -> str:
    raw = f"{_CACHE_VERSION}|{_library_id()}|{_cpu_flags()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _cache_file() -> Path:
    return cache_dir() / f"cpu-probe-{cache_key()}.json"


def _override() -> ProbeResult | None:
    value = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return ProbeResult(False, "env", f"{ENV_OVERRIDE}={value}: extra buffer types off")
    if value in ("1", "true", "yes", "on"):
        return ProbeResult(True, "env", f"{ENV_OVERRIDE}={value}: extra buffer types on")
    return None


_memo: ProbeResult | None = None


def decide(*, refresh: bool = False) -> ProbeResult:
    """Whether to load models with extra buffer types: env override, cached answer, or a fresh probe."""
    global _memo
    if (forced := _override()) is not None:
        return forced
    if _memo is not None and not refresh:
        return _memo
    if not refresh:
        try:
            data = json.loads(_cache_file().read_text())
            _memo = ProbeResult(**{**data, "source": "cache"})
            return _memo
        except (OSError, ValueError, TypeError):
            pass
    _memo = probe_and_cache()
    return _memo


def probe_and_cache() -> ProbeResult:
    """Run the probe now (whatever the override says) and keep a conclusive answer in the cache."""
    result = run_probe()
    if result.source == "probe":
        path = _cache_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(result)))
            tmp.replace(path)
        except OSError:
            pass
    return result


def use_extra_bufts() -> bool:
    return decide().extra_bufts


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _run_child(model: Path, mode: str) -> subprocess.CompletedProcess[str] | None:
    """mode: "extra" (llama.cpp's default buffer types), "plain" (none), "repack" (CPU_REPACK only)."""
    env = {**os.environ}
    env.pop(ENV_OVERRIDE, None)
    try:
        return subprocess.run(
            [sys.executable, "-m", "thyme_cli.engine.llama.cpu_probe", "child", str(model), mode],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None


def _why(proc: subprocess.CompletedProcess[str] | None) -> str:
    if proc is None:
        return f"the probe did not finish in {PROBE_TIMEOUT_S:.0f} s"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def run_probe() -> ProbeResult:
    """Run the child with extra buffer types; after a crash, once more without them."""
    with tempfile.TemporaryDirectory(prefix="thyme-cpu-probe-") as tmp:
        model = write_probe_model(Path(tmp) / "probe-quant.gguf")
        proc = _run_child(model, "extra")
        if proc is not None and proc.returncode == 0:
            return ProbeResult(
                True,
                "probe",
                "a quantized model (Q4_0, Q8_0, Q4_K, Q6_K) runs with "
                "llama.cpp's extra buffer types (repacked / AMX weights)",
            )
        if proc is None or proc.returncode > 0:
            return ProbeResult(True, "inconclusive", f"the quantized-model probe failed: {_why(proc)}")
        sig = _signal_name(proc.returncode)
        plain = _run_child(model, "plain")
        plain_ok = plain is not None and plain.returncode == 0
        repack = _run_child(model, "repack") if plain_ok else None
        repack_ok = repack is not None and repack.returncode == 0
        detail = (
            f"a quantized model dies with {sig} when llama.cpp uses its extra buffer types "
            f"(AMX / repacked weights) on this CPU; thyme loads models without them"
        )
        if repack_ok:
            detail += " but keeps the repacked Q4_0 / Q4_K layers (CPU_REPACK), which run here"
        if not plain_ok:
            detail += f", but it fails without them too: {_why(plain)}"
        return ProbeResult(False, "probe", detail, crashed=sig, plain_ok=plain_ok, repack_ok=repack_ok)


# --- repacked weights without AMX: llama.cpp's CPU_REPACK buffer type for chosen tensors ---------

# ggml types the probe model checks in the CPU_REPACK buffer (its Q4_0 and Q4_K layer matrices).
REPACK_TYPES = frozenset({_Q4_0, _Q4_K})


def apply(params: Any, model_path: Path, *, cpu_only: bool) -> tuple[Any, str]:
    """Set the buffer types of ``params`` (llama_model_params) for this CPU: llama.cpp's extra
    buffer types unless the probe saw them crash; then, for CPU-only loads where the probe saw it
    run, CPU_REPACK for the Q4_0 / Q4_K layer matrices. Returns what must stay alive while the model
    loads (the override array, or None) and a description for people."""
    import ctypes

    from thyme_cli.engine.llama.gguf_meta import read_tensor_types

    result = decide()
    params.use_extra_bufts = result.extra_bufts
    if result.extra_bufts:
        return None, "llama.cpp default"
    if result.repack_ok and cpu_only:
        names = repack_tensor_names(read_tensor_types(model_path))
        overrides = repack_overrides(names)
        if overrides is not None:
            params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
            return overrides, f"CPU_REPACK for {len(names)} Q4_0/Q4_K layer matrices, plain CPU otherwise"
    return None, "plain CPU"


def repack_tensor_names(types: dict[str, int]) -> list[str]:
    """The layer matrices (blk.N.*.weight, used only in matrix products) of a repackable type."""
    return sorted(
        n
        for n, t in types.items()
        if n.startswith("blk.")
        and n.endswith(".weight")
        and t in REPACK_TYPES
        and not n.endswith(("norm.weight", "_norm.weight"))
    )


def repack_overrides(names: list[str]) -> Any:
    """A NULL-terminated llama_model_tensor_buft_override array putting ``names`` in CPU_REPACK
    (keep the returned object alive while the model loads); None where this build has no CPU_REPACK."""
    import ctypes
    import re

    if not names:
        return None
    repack = _cpu_repack_buffer_type()
    if repack is None:
        return None

    class Override(ctypes.Structure):
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    return (Override * 2)(Override(pattern.encode(), repack), Override(None, None))


def _cpu_repack_buffer_type() -> int | None:
    """The CPU backend's CPU_REPACK buffer type (a ggml pointer), or None where this build lacks it."""
    import ctypes

    libraries = _ggml_libraries()
    if libraries is None:
        return None
    ggml, base = libraries
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return None
    addr = ggml.ggml_backend_reg_get_proc_address(
        ggml.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts"
    )
    if not addr:
        return None
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
    repack = None
    i = 0
    while bufts and bufts[i]:
        if base.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
            repack = bufts[i]
        i += 1
    return repack


def _ggml_libraries() -> tuple[Any, Any] | None:
    """libggml and libggml-base of the installed llama_cpp, typed for the calls above (None if absent)."""
    import ctypes

    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    try:
        ggml = ctypes.CDLL(str(next(lib.glob("libggml.so*"))))
        base = ctypes.CDLL(str(next(lib.glob("libggml-base.so*"))))
    except (StopIteration, OSError):
        return None
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    return ggml, base


# --- the probe model: a tiny `llama` GGUF with quantized matrices, written without the gguf package ---


def _gguf_string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, value: str | int | float) -> bytes:
    head = _gguf_string(key)
    if isinstance(value, str):
        return head + struct.pack("<I", 8) + _gguf_string(value)
    if isinstance(value, float):
        return head + struct.pack("<If", 6, value)
    return head + struct.pack("<II", 4, value)


def _quantized(rng: random.Random, qtype: int, rows: int, cols: int) -> bytes:
    """Random blocks with small, finite fp16 scales (any other bit pattern is a valid block)."""
    per, size, scale_at = _BLOCKS[qtype]
    n_blocks = rows * cols // per
    data = bytearray(rng.randbytes(n_blocks * size))
    scale = struct.pack("<e", 0.002)
    for b in range(n_blocks):
        for off in scale_at:
            data[b * size + off : b * size + off + 2] = scale
    return bytes(data)


_Tensor = tuple[str, tuple[int, ...], int, bytes]  # name, dims, ggml type, data


def write_probe_model(path: Path, seed: int = 0) -> Path:
    """A 3-layer `llama` model (no vocabulary: the probe feeds token ids) of about 1 MB."""
    return _write_gguf(path, _probe_metadata(), _probe_tensors(random.Random(seed)))


def _probe_tensors(rng: random.Random) -> list[_Tensor]:
    """The probe's weights: every quantized type the fast CPU paths handle, in attention and FFN matrices."""
    tensors: list[_Tensor] = []

    def f32(name: str, n: int) -> None:
        tensors.append((name, (n,), _F32, struct.pack(f"<{n}f", *([1.0] * n))))

    def mat(name: str, cols: int, rows: int, qtype: int) -> None:
        tensors.append((name, (cols, rows), qtype, _quantized(rng, qtype, rows, cols)))

    mat("token_embd.weight", _N_EMBD, _N_VOCAB, _Q8_0)
    f32("output_norm.weight", _N_EMBD)
    mat("output.weight", _N_EMBD, _N_VOCAB, _Q6_K)
    for i, (attn, ffn) in enumerate(((_Q4_0, _Q8_0), (_Q4_K, _Q6_K), (_Q8_0, _Q4_K))):
        p = f"blk.{i}."
        f32(p + "attn_norm.weight", _N_EMBD)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            mat(p + name + ".weight", _N_EMBD, _N_EMBD, attn)
        f32(p + "ffn_norm.weight", _N_EMBD)
        mat(p + "ffn_gate.weight", _N_EMBD, _N_FF, ffn)
        mat(p + "ffn_up.weight", _N_EMBD, _N_FF, ffn)
        mat(p + "ffn_down.weight", _N_FF, _N_EMBD, ffn)
    return tensors


def _probe_metadata() -> list[bytes]:
    """The GGUF key/value pairs of the probe's `llama` architecture."""
    return [
        _kv("general.architecture", "llama"),
        _kv("general.name", "thyme-cpu-probe"),
        _kv("general.alignment", 32),
        _kv("llama.vocab_size", _N_VOCAB),
        _kv("llama.context_length", 512),
        _kv("llama.embedding_length", _N_EMBD),
        _kv("llama.block_count", 3),
        _kv("llama.feed_forward_length", _N_FF),
        _kv("llama.attention.head_count", _N_HEAD),
        _kv("llama.attention.head_count_kv", _N_HEAD),
        _kv("llama.attention.layer_norm_rms_epsilon", 1e-5),
        _kv("llama.rope.dimension_count", _N_EMBD // _N_HEAD),
        _kv("tokenizer.ggml.model", "none"),
    ]


def _write_gguf(path: Path, kvs: list[bytes], tensors: list[_Tensor]) -> Path:
    """A GGUF v3 file: header, metadata, tensor infos, then the 32-byte aligned tensor data."""
    infos = bytearray()
    blobs = bytearray()
    for name, dims, qtype, data in tensors:
        infos += _gguf_string(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", qtype, len(blobs))
        blobs += data + b"\0" * (-len(data) % 32)
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + bytes(infos)
    with open(path, "wb") as f:
        f.write(header + b"\0" * (-len(header) % 32))
        f.write(blobs)
    return path


# --- the child -------------------------------------------------------------------------------------


class _ProbeFailed(Exception):
    """A step of the child that failed without a crash (its message is printed)."""


def _child(model_path: str, mode: str) -> int:
    """Load the probe model as MODE says and decode with it; a crash here is the answer the parent wants."""
    import llama_cpp

    callback = _silence_llama()  # referenced until the end: llama.cpp keeps calling it
    llama_cpp.llama_backend_init()
    try:
        model = _load_probe_model(model_path, mode)
        ctx = _probe_context(model)
        batch = llama_cpp.llama_batch_init(_PROMPT_TOKENS, 0, 1)
        _decode_probe_prompt(ctx, batch)
    except _ProbeFailed as e:
        print(e)
        return 1
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    print(json.dumps({"ok": True, "mode": mode}))
    del callback
    return 0


def _silence_llama() -> Any:
    """Install a log callback that drops llama.cpp's messages; the caller keeps it alive."""
    import ctypes

    import llama_cpp

    def _quiet(_level: int, _text: bytes | None, _user: object) -> None:
        return None

    callback = llama_cpp.llama_log_callback(_quiet)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


def _load_probe_model(model_path: str, mode: str) -> Any:
    """CPU-only load with extra buffer types (extra), without (plain), or CPU_REPACK for Q4 layers (repack)."""
    import ctypes

    import llama_cpp

    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_extra_bufts = mode == "extra"
    overrides = None
    if mode == "repack":
        from thyme_cli.engine.llama.gguf_meta import read_tensor_types

        overrides = repack_overrides(repack_tensor_names(read_tensor_types(Path(model_path))))
        if overrides is None:
            raise _ProbeFailed("this llama.cpp build has no CPU_REPACK buffer type")
        mp.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mp)
    if not model:
        raise _ProbeFailed("llama.cpp could not load the probe model")
    return model


def _probe_context(model: Any) -> Any:
    """A small context with up to four threads (enough to reach the threaded kernels)."""
    import llama_cpp

    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = 256
    cp.n_batch = cp.n_ubatch = 128
    cp.n_threads = cp.n_threads_batch = max(1, min(4, os.cpu_count() or 1))
    ctx = llama_cpp.llama_init_from_model(model, cp)
    if not ctx:
        raise _ProbeFailed("llama.cpp could not create a context for the probe model")
    return ctx


def _decode_probe_prompt(ctx: Any, batch: Any) -> None:
    """A prompt-sized batch (matrix kernels), then single tokens (vector kernels); logits must be finite."""
    import math

    import llama_cpp

    tokens = [(7 * i + 3) % _N_VOCAB for i in range(_PROMPT_TOKENS + 4)]
    for i in range(_PROMPT_TOKENS):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tokens[i], i, 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = int(i == _PROMPT_TOKENS - 1)
    batch.n_tokens = _PROMPT_TOKENS
    rc = llama_cpp.llama_decode(ctx, batch)
    for j in range(_PROMPT_TOKENS, len(tokens)):  # single tokens take the other (vector) kernels
        if rc != 0:
            break
        batch.token[0], batch.pos[0], batch.logits[0] = tokens[j], j, 1
        batch.n_tokens = 1
        rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise _ProbeFailed(f"llama_decode failed with code {rc}")
    logits = llama_cpp.llama_get_logits_ith(ctx, -1)
    if not all(math.isfinite(logits[i]) for i in range(_N_VOCAB)):
        raise _ProbeFailed("the probe model's logits are not finite")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        sys.exit(_child(sys.argv[2], sys.argv[3]))
    print(json.dumps(asdict(decide(refresh="--refresh" in sys.argv))))
