"""Quantize a GGUF and check that a converted pair loads, with llama.cpp, in a child process.

``python -m thyme_cli.models.convert.quantize quantize IN OUT TYPE`` / ``... verify MODEL MMPROJ``:
llama.cpp aborts the whole process on some malformed files, and a conversion must end in one clear
line. Results go to stdout as ``@@thyme {json}`` lines, llama.cpp's log to stderr (the phase's log).
"""

from __future__ import annotations

import ctypes
import re
import sys
from typing import Any

from thyme_cli.models.convert.worker import emit

# Quantization types offered for the language model -> llama_ftype (llama.h). F32/F16/BF16 are
# written by the converter directly and never go through llama_model_quantize.
QUANT_FTYPES: dict[str, int] = {
    "Q4_K_M": 15,
    "Q4_K_S": 14,
    "Q5_K_M": 17,
    "Q5_K_S": 16,
    "Q6_K": 18,
    "Q8_0": 7,
    "Q3_K_M": 12,
    "Q4_0": 2,
}
_PROGRESS_RE = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_recent_errors: list[str] = []
_pending = ""


def _on_log(level: int, text: bytes | None, _user_data: Any) -> None:
    """Copy llama.cpp's log to stderr; turn quantize's "[ i/ n]" lines into progress events."""
    global _pending
    piece = (text or b"").decode("utf-8", "replace")
    sys.stderr.write(piece)
    _pending += piece
    while "\n" in _pending:
        line, _pending = _pending.split("\n", 1)
        m = _PROGRESS_RE.match(line.strip())
        if m:
            emit("progress", done=int(m.group(1)), total=int(m.group(2)))
        if level in (3, 4) and line.strip():  # GGML_LOG_LEVEL_WARN, _ERROR
            _recent_errors.append(line.strip())


def _install_log() -> Any:
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
    return callback  # keep a reference for the life of the process


def _last_error(default: str) -> str:
    return _recent_errors[-1] if _recent_errors else default


def quantize(src: str, dst: str, quant: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(_last_error(f"llama_model_quantize returned {rc}"))
    emit("done", path=dst)


def _honour_cpu_probe() -> None:
    """Make this (child) process load models without extra buffer types where cpu_probe says they
    crash: llama_cpp.Llama has no parameter for it, so its default model params are adjusted."""
    import llama_cpp.llama_cpp as low

    from thyme_cli.engine.llama.cpu_probe import use_extra_bufts

    if use_extra_bufts():
        return
    defaults = low.llama_model_default_params

    def without_extra_bufts() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = without_extra_bufts


def verify(model_path: str, mmproj_path: str) -> None:
    """Load the language model and the projector together, decode a few tokens, encode one image."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    import numpy as np

    try:
        _honour_cpu_probe()
        llm = llama_cpp.Llama(model_path=model_path, n_ctx=512, n_gpu_layers=0, n_threads=2, verbose=False)
    except Exception as e:
        raise RuntimeError(f"the language model does not load: {_last_error(str(e))}") from None
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 2
    params.print_timings = False
    ctx = mtmd.mtmd_init_from_file(mmproj_path.encode(), llm.model, params)
    if not ctx:
        raise RuntimeError(f"the projector does not load with this model: {_last_error('mtmd_init_from_file failed')}")
    try:
        if not mtmd.mtmd_support_vision(ctx):
            raise RuntimeError("the projector file has no vision encoder")
        tokens = llm.tokenize(b"Hello, what is in this image?", add_bos=False, special=True)
        llm.eval(tokens)
        if not np.isfinite(np.asarray(llm.scores[len(tokens) - 1])).all():
            raise RuntimeError("the language model's logits are not finite")
        n_image_tokens, n_embd = _encode_test_image(mtmd, ctx, llm.n_embd())
        emit(
            "verified",
            n_vocab=llm.n_vocab(),
            n_embd=llm.n_embd(),
            n_params=llama_cpp.llama_model_n_params(llm.model),
            image_tokens=n_image_tokens,
            image_embd=n_embd,
        )
    finally:
        mtmd.mtmd_free(ctx)
        llm.close()


def _encode_test_image(mtmd: Any, ctx: Any, n_embd: int) -> tuple[int, int]:
    """Encode a small gradient image through the projector; return (image tokens, embedding width)."""
    import numpy as np

    side = 56
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.uint8(128)), axis=-1)
    raw = np.ascontiguousarray(pixels).tobytes()
    bitmap = mtmd.mtmd_bitmap_init(side, side, (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw))
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        text = mtmd.mtmd_default_marker()
        inp = mtmd.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), bitmaps, 1) != 0:
            raise RuntimeError(f"the projector cannot preprocess an image: {_last_error('mtmd_tokenize failed')}")
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                raise RuntimeError(f"the projector cannot encode an image: {_last_error('mtmd_encode_chunk failed')}")
            n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
            embd = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n_tokens * n_embd,))
            if not np.isfinite(embd).all():
                raise RuntimeError("the projector's image embedding is not finite")
            return n_tokens, n_embd
        raise RuntimeError("the projector produced no image tokens")
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)


def main(argv: list[str]) -> int:
    _callback = _install_log()
    try:
        if len(argv) == 4 and argv[0] == "quantize" and argv[3] in QUANT_FTYPES:
            quantize(argv[1], argv[2], argv[3])
        elif len(argv) == 3 and argv[0] == "verify":
            verify(argv[1], argv[2])
        else:
            emit("error", kind="usage", message=f"bad arguments: {argv}")
            return 2
    except Exception as e:
        emit("error", kind=type(e).__name__, message=str(e).strip() or type(e).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
