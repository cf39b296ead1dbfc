"""The llama.cpp and libmtmd handles of one loaded model, behind small typed methods.

Everything that touches ctypes lives here: loading (with clear errors instead of NULL
pointers and log spam), batched text decoding, image encode / decode through libmtmd, KV-cache
edits, token pieces. Each method adds the seconds it spends inside the C library to
``native_s``, so callers can tell llama.cpp time from Python overhead.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from thyme_cli.defaults import CONTEXT_FULL_HINT
from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.images import PreparedImage
from thyme_cli.engine.llama import cpu_probe
from thyme_cli.engine.llama.cpu import cpu_defaults
from thyme_cli.engine.llama.gguf_meta import read_gguf_keys
from thyme_cli.engine.settings import EngineOptions
from thyme_cli.errors import EngineError

# Projectors trained with Hugging Face's smart_resize (one vision token per factor x factor px).
QWEN_PROJECTORS = frozenset({"qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger"})
_ALL_LAYERS = 0x7FFFFFFF
# A NULL post-decode callback (the binding insists on the function-pointer type).
_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()
# ggml type ids of the KV cache types EngineOptions offers.
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}
# --flash-attn on / off / auto (None) as llama.cpp's flash attention types.
_FLASH_TYPES = {
    None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_CTX_HINT = CONTEXT_FULL_HINT


class LogSink:
    """Receives llama.cpp / mtmd log lines: keeps the recent warnings and errors for error
    messages, and prints everything only when verbose."""

    def __init__(self) -> None:
        self.verbose = False
        self.recent: deque[str] = deque(maxlen=20)
        self._last_level = 0

    def __call__(self, level: int, text: bytes | None, _user_data: Any) -> None:
        line = (text or b"").decode("utf-8", "replace")
        if level == 5:  # GGML_LOG_LEVEL_CONT: continues the previous line
            level = self._last_level
        self._last_level = level
        if self.verbose:
            sys.stderr.write(line)
        if level in (2, 3) and line.strip():
            self.recent.append(line.strip())

    def last_error(self) -> str:
        return self.recent[-1] if self.recent else ""

    def clear(self) -> None:
        self.recent.clear()


SINK = LogSink()
_CALLBACK = llama_cpp.llama_log_callback(SINK)
_initialized = False


def _init_library(verbose: bool) -> None:
    """Route all llama.cpp / mtmd logging through SINK (once per process)."""
    global _initialized
    SINK.verbose = verbose
    if _initialized:
        return
    llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_CALLBACK, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    _initialized = True


def _detail() -> str:
    last = SINK.last_error()
    return f" (llama.cpp: {last})" if last else ""


@dataclass(frozen=True)
class ProjectorInfo:
    """What the engine needs to know about the mmproj before loading it."""

    projector_type: str
    patch_size: int
    projection_dim: int | None

    @property
    def qwen_family(self) -> bool:
        return self.projector_type in QWEN_PROJECTORS

    @property
    def resize_factor(self) -> int:
        """Pixels per vision token side: patch size x the 2x2 spatial merge."""
        return self.patch_size * 2


def inspect_files(model_path: Path, mmproj_path: Path) -> ProjectorInfo:
    """Validate both files from their GGUF headers; EngineError with a hint when they are wrong."""
    model_meta = read_gguf_keys(model_path, ["general.architecture"], what="model")
    if model_meta["general.architecture"] == "clip":
        raise EngineError(
            f"model file is a vision projector, not a language model: {model_path}",
            hint="pass the language model as the model and this file as the mmproj",
        )
    keys = [
        "general.architecture",
        "clip.projector_type",
        "clip.vision.projector_type",
        "clip.has_vision_encoder",
        "clip.vision.projection_dim",
        "clip.vision.patch_size",
    ]
    meta = read_gguf_keys(mmproj_path, keys, what="projector (mmproj)")
    if meta["general.architecture"] != "clip":
        raise EngineError(
            f"projector file is not a vision projector (architecture {meta['general.architecture']!r}): {mmproj_path}",
            hint="the mmproj file is the small 'mmproj-*.gguf' next to the model",
        )
    ptype = meta["clip.vision.projector_type"] or meta["clip.projector_type"]
    if meta["clip.has_vision_encoder"] is False or not isinstance(ptype, str):
        raise EngineError(
            f"projector has no vision encoder: {mmproj_path}",
            hint="thyme needs an image projector, not an audio-only one",
        )
    patch = meta["clip.vision.patch_size"]
    dim = meta["clip.vision.projection_dim"]
    return ProjectorInfo(
        projector_type=ptype,
        patch_size=int(patch) if isinstance(patch, int) and patch > 0 else 14,
        projection_dim=int(dim) if isinstance(dim, int) else None,
    )


def _free_handles(batch: Any, mtmd_ctx: Any, ctx: Any, model: Any) -> None:
    """Free what was allocated, in reverse order of creation."""
    if batch is not None:
        llama_cpp.llama_batch_free(batch)
    if mtmd_ctx:
        mtmd.mtmd_free(mtmd_ctx)
    if ctx:
        llama_cpp.llama_free(ctx)
    if model:
        llama_cpp.llama_model_free(model)


@dataclass
class Chunk:
    """One piece of a tokenized suffix: text tokens, or one image's vision tokens."""

    ptr: Any
    image: bool
    tokens: list[int]
    n_tokens: int  # KV cells it occupies
    n_pos: int  # positions it advances (M-RoPE: max(grid) for an image, not n_tokens)
    grid: tuple[int, int] | None = None  # (columns, rows) of vision tokens


class Native:
    """One model + context + projector; freed by ``close()``."""

    def __init__(
        self,
        model_path: Path,
        mmproj_path: Path,
        options: EngineOptions,
        projector: ProjectorInfo,
        token_limits: tuple[int | None, int | None],
    ) -> None:
        self.native_s = 0.0
        self.projector = projector
        self._limits = token_limits
        _init_library(options.verbose)
        SINK.clear()
        self._closed = False
        self.model: Any = None
        self.ctx: Any = None
        self.mtmd_ctx: Any = None
        self._batch: Any = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        try:
            self._load(model_path, mmproj_path, options)
        except BaseException:
            self.close()
            raise
        # Freed at close(), or when garbage-collected / at interpreter exit if close() was forgotten.
        self._finalizer = weakref.finalize(self, _free_handles, self._batch, self.mtmd_ctx, self.ctx, self.model)

    # --- loading -----------------------------------------------------------------------------

    def _load(self, model_path: Path, mmproj_path: Path, options: EngineOptions) -> None:
        """Model, then context, then projector, then the reusable batch; each step raises EngineError."""
        self.gpu = bool(llama_cpp.llama_supports_gpu_offload())
        layers = options.n_gpu_layers
        if layers is None:
            layers = -1 if self.gpu else 0
        self.n_gpu_layers = layers
        self._load_model(model_path, mmproj_path, options)
        self._create_context(options)
        self._load_projector(model_path, mmproj_path, options)
        self._init_batch()
        self._read_model_texts()

    def _load_model(self, model_path: Path, mmproj_path: Path, options: EngineOptions) -> None:
        """Load the weights (CPU repacking as the probe decided) and check the projector fits them."""
        layers = self.n_gpu_layers
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = _ALL_LAYERS if layers < 0 else layers
        mp.use_mmap = options.use_mmap
        # Off only where a child process saw quantized kernels crash with them (cpu_probe); then the
        # Q4_0 / Q4_K layers still get repacked layouts where the probe saw those run (CPU-only loads).
        self.cpu_probe = cpu_probe.decide()
        self._overrides, self.buffer_types = cpu_probe.apply(mp, model_path, cpu_only=layers == 0)
        if options.verbose:
            sys.stderr.write(
                f"thyme: weights in {self.buffer_types} buffers ({self.cpu_probe.source}: {self.cpu_probe.detail})\n"
            )
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mp)
        if not self.model:
            raise EngineError(
                f"llama.cpp could not load the model {model_path}{_detail()}",
                hint="the file may be corrupt, or made for a newer llama.cpp",
            )
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd_inp = llama_cpp.llama_model_n_embd_inp(self.model)
        dim = self.projector.projection_dim
        if dim is not None and dim != self.n_embd_inp:
            raise EngineError(
                f"projector {mmproj_path.name} does not match model {model_path.name} "
                f"(projector output {dim}, model input {self.n_embd_inp})",
                hint="use the mmproj file published with this model",
            )

    def _create_context(self, options: EngineOptions) -> None:
        """The llama context: threads, batch size, sequences, flash attention and KV cache type."""
        cpu = cpu_defaults()  # one thread per physical core decodes; every CPU runs batches (engine/cpu.py)
        threads = options.n_threads or cpu.decode_threads
        threads_batch = options.n_threads or cpu.batch_threads
        self.flash_attn = (
            options.flash_attn if options.flash_attn is not None else (None if self.n_gpu_layers else False)
        )
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = options.n_ctx
        cp.n_batch = cp.n_ubatch = min(options.n_batch, options.n_ctx)
        cp.n_seq_max = options.n_seq
        if options.n_seq > 1:  # sequences forked from one prefix share its cells (engine/parallel.py)
            cp.kv_unified = True
        cp.n_threads = threads
        cp.n_threads_batch = threads_batch
        cp.flash_attn_type = _FLASH_TYPES[self.flash_attn]
        cp.type_k = cp.type_v = _GGML_TYPES[options.kv_cache_type]
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise EngineError(
                f"llama.cpp could not create a context of {options.n_ctx} tokens{_detail()}",
                hint="lower --ctx, or offload fewer layers with --gpu-layers",
            )
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = min(llama_cpp.llama_n_batch(self.ctx), llama_cpp.llama_n_ubatch(self.ctx))
        self.n_threads = threads
        self.n_threads_batch = threads_batch
        self.n_seq_max = options.n_seq

    def _load_projector(self, model_path: Path, mmproj_path: Path, options: EngineOptions) -> None:
        """The libmtmd context of the mmproj file, which must take images."""
        pp = mtmd.mtmd_context_params_default()
        pp.use_gpu = options.mmproj_gpu if options.mmproj_gpu is not None else (self.gpu and self.n_gpu_layers != 0)
        pp.print_timings = False
        pp.n_threads = self.n_threads_batch
        self._marker = IMAGE_MARKER.encode()
        pp.media_marker = self._marker
        pp.flash_attn_type = _FLASH_TYPES[options.mmproj_flash_attn]
        pp.warmup = options.mmproj_warmup if options.mmproj_warmup is not None else bool(pp.use_gpu)
        lo, hi = self._limits
        if lo is not None:
            pp.image_min_tokens = lo
        if hi is not None:
            pp.image_max_tokens = hi
        self.mmproj_gpu = bool(pp.use_gpu)
        self.mtmd_ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), self.model, pp)
        if not self.mtmd_ctx:
            raise EngineError(
                f"libmtmd could not load the projector {mmproj_path.name} for {model_path.name}{_detail()}",
                hint="use the mmproj file published with this model",
            )
        if not mtmd.mtmd_support_vision(self.mtmd_ctx):
            raise EngineError(f"projector {mmproj_path.name} does not take images")
        self.use_mrope = bool(mtmd.mtmd_decode_use_mrope(self.mtmd_ctx))

    def _init_batch(self) -> None:
        """One batch reused by every decode, with numpy views of its token, position and logits arrays."""
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._batch_seq = 0
        b = self._batch
        for i in range(self.n_batch):
            b.seq_id[i][0] = 0
            b.n_seq_id[i] = 1
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

    def _read_model_texts(self) -> None:
        """BOS/EOS texts, the embedded chat template and the model's description."""
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos_text = self._special_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        self.chat_template: str | None = raw.decode("utf-8", "replace") if raw else None
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.model, desc, 256)
        self.description = desc.value.decode("utf-8", "replace")

    def _special_text(self, token: int) -> str:
        return "" if token < 0 else self.piece(token).decode("utf-8", "replace")

    def close(self) -> None:
        """Free native handles (context before model); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()
        else:
            _free_handles(self._batch, self.mtmd_ctx, self.ctx, self.model)
        self._batch = self.mtmd_ctx = self.ctx = self.model = None

    @property
    def closed(self) -> bool:
        return self._closed

    # --- text ----------------------------------------------------------------------------------

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens as their text); cached."""
        got = self._pieces.get(token)
        if got is None:
            # A buffer per miss, not a shared one: conversations on other sequences run in threads.
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
            got = buf.raw[:n]
            self._pieces[token] = got
        return got

    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, end-of-turn (<|im_end|>, <end_of_turn>, ...); cached."""
        got = self._eog.get(token)
        if got is None:
            got = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return got

    def is_control(self, token: int) -> bool:
        """A control (special) token such as <|im_start|>: the tokenizer always splits around it."""
        return bool(llama_cpp.llama_vocab_is_control(self.vocab, token))

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    # --- evaluation ----------------------------------------------------------------------------

    def _use_seq(self, seq: int) -> None:
        """Point the shared batch at sequence ``seq`` (a context made with n_seq > 1)."""
        if seq != self._batch_seq:
            b = self._batch
            for i in range(self.n_batch):
                b.seq_id[i][0] = seq
            self._batch_seq = seq

    def decode_tokens(
        self, tokens: Sequence[int], pos0: int, on_batch: Callable[[int], None] | None = None, seq: int = 0
    ) -> None:
        """Evaluate text tokens at positions pos0.., in n_batch pieces; logits for the last one.

        ``on_batch`` hears the number of tokens done after each piece (progress display)."""
        n_total = len(tokens)
        b, nb = self._batch, self.n_batch
        self._use_seq(seq)
        for start in range(0, n_total, nb):
            n = min(nb, n_total - start)
            self._tok[:n] = tokens[start : start + n]
            self._pos[:n] = np.arange(pos0 + start, pos0 + start + n, dtype=np.int32)
            self._out[:n] = 0
            if start + n == n_total:
                self._out[n - 1] = 1
            b.n_tokens = n
            t0 = time.perf_counter()
            rc = llama_cpp.llama_decode(self.ctx, b)
            self.native_s += time.perf_counter() - t0
            if rc != 0:
                raise EngineError(f"llama_decode failed with code {rc}{_detail()}", hint=_CTX_HINT)
            if on_batch is not None:
                on_batch(start + n)

    def decode_one(self, token: int, pos: int, seq: int = 0) -> None:
        """Evaluate one generated token (the hot path of the decode loop)."""
        b = self._batch
        if seq != self._batch_seq:
            self._use_seq(seq)
        b.token[0] = token
        b.pos[0] = pos
        b.logits[0] = 1
        b.n_tokens = 1
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self.ctx, b)
        self.native_s += time.perf_counter() - t0
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc}{_detail()}", hint=_CTX_HINT)

    def sample(self, sampler: Any) -> int:
        t0 = time.perf_counter()
        token: int = llama_cpp.llama_sampler_sample(sampler, self.ctx, -1)
        self.native_s += time.perf_counter() - t0
        return token

    def logits(self) -> np.ndarray:
        """A copy of the logits of the last evaluated position."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        if not ptr:
            raise EngineError("no logits are available (nothing has been evaluated yet)")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def seq_rm(self, p0: int, seq: int = 0) -> None:
        """Drop every KV cell at position >= p0 (the context's divergent tail)."""
        t0 = time.perf_counter()
        ok = llama_cpp.llama_memory_seq_rm(self.mem, seq, p0, -1)
        self.native_s += time.perf_counter() - t0
        if not ok:
            raise EngineError(f"llama.cpp could not remove the context tail from position {p0}")

    def clear(self) -> None:
        """Empty the KV cache (metadata only: cheap, no memset of the buffers)."""
        llama_cpp.llama_memory_clear(self.mem, False)

    def clear_seq(self, seq: int) -> None:
        """Empty one sequence (the others keep their cells)."""
        llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)

    def state_seq_get(self, seq: int = 0) -> bytes:
        """The KV cells of one sequence as bytes (llama.cpp's sequence-state format)."""
        t0 = time.perf_counter()
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq)
        buf = (ctypes.c_ubyte * size)()
        n = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, seq)
        self.native_s += time.perf_counter() - t0
        return bytes(buf)[:n]

    def state_seq_set(self, data: bytes, seq: int = 0) -> bool:
        """Load bytes from state_seq_get into sequence ``seq``; False when llama.cpp refuses them."""
        t0 = time.perf_counter()
        buf = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
        n = llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(data), seq)
        self.native_s += time.perf_counter() - t0
        return bool(n)

    # --- images ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def tokenize_multimodal(
        self, text: str, images: Sequence[PreparedImage], *, add_special: bool
    ) -> Iterator[list[Chunk]]:
        """mtmd_tokenize ``text`` (one IMAGE_MARKER per image); the chunks live inside the block."""
        bitmaps: list[Any] = []
        chunks_ptr = None
        try:
            t0 = time.perf_counter()
            for img in images:
                data = ctypes.cast(ctypes.c_char_p(img.rgb), ctypes.POINTER(ctypes.c_ubyte))
                bm = mtmd.mtmd_bitmap_init(img.width, img.height, data)
                if not bm:
                    raise EngineError(f"libmtmd could not take image {img.path}{_detail()}")
                bitmaps.append(bm)
            data_text = text.encode()
            it = mtmd.mtmd_input_text()
            it.text, it.text_len, it.add_special, it.parse_special = data_text, len(data_text), add_special, True
            chunks_ptr = mtmd.mtmd_input_chunks_init()
            arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self.mtmd_ctx, chunks_ptr, ctypes.byref(it), arr, len(bitmaps))
            if rc != 0:
                why = {
                    1: "the number of image markers does not match the number of images",
                    2: "an image could not be preprocessed",
                }.get(rc, f"error {rc}")
                raise EngineError(f"libmtmd could not tokenize the input: {why}{_detail()}")
            chunks = [
                self._describe(mtmd.mtmd_input_chunks_get(chunks_ptr, i))
                for i in range(mtmd.mtmd_input_chunks_size(chunks_ptr))
            ]
            self.native_s += time.perf_counter() - t0
            yield chunks
        finally:
            if chunks_ptr:
                mtmd.mtmd_input_chunks_free(chunks_ptr)
            for bm in bitmaps:
                mtmd.mtmd_bitmap_free(bm)

    def _describe(self, ptr: Any) -> Chunk:
        kind = mtmd.mtmd_input_chunk_get_type(ptr)
        if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            toks = mtmd.mtmd_input_chunk_get_tokens_text(ptr, ctypes.byref(n))
            tokens = list(toks[: n.value]) if n.value else []
            return Chunk(ptr=ptr, image=False, tokens=tokens, n_tokens=len(tokens), n_pos=len(tokens))
        if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            raise EngineError("libmtmd produced a non-image media chunk; only images are supported")
        img = mtmd.mtmd_input_chunk_get_tokens_image(ptr)
        grid = (mtmd.mtmd_image_tokens_get_nx(img), mtmd.mtmd_image_tokens_get_ny(img))
        return Chunk(
            ptr=ptr,
            image=True,
            tokens=[],
            n_tokens=mtmd.mtmd_input_chunk_get_n_tokens(ptr),
            n_pos=mtmd.mtmd_input_chunk_get_n_pos(ptr),
            grid=grid,
        )

    def encode_image(self, chunk: Chunk) -> np.ndarray:
        """Run the vision encoder on one image chunk; returns its embeddings (n_tokens x n_embd)."""
        t0 = time.perf_counter()
        rc = mtmd.mtmd_encode_chunk(self.mtmd_ctx, chunk.ptr)
        if rc != 0:
            raise EngineError(f"the vision encoder failed with code {rc}{_detail()}")
        ptr = mtmd.mtmd_get_output_embd(self.mtmd_ctx)
        # A view on mtmd's buffer: valid until the next encode (the caller copies it if kept).
        embd = np.ctypeslib.as_array(ptr, shape=(chunk.n_tokens * self.n_embd_inp,))
        self.native_s += time.perf_counter() - t0
        return embd

    def decode_image(self, chunk: Chunk, embd: np.ndarray, pos: int, seq: int = 0) -> int:
        """Put an encoded image into the KV cache at ``pos``; returns the next position."""
        if chunk.n_tokens > self.n_batch and mtmd.mtmd_decode_use_non_causal(self.mtmd_ctx, chunk.ptr):
            raise EngineError(
                f"this model attends to whole images at once: an image of {chunk.n_tokens} tokens needs "
                f"a batch of at least that size (n_batch is {self.n_batch})",
            )
        new_pos = llama_cpp.llama_pos(0)
        t0 = time.perf_counter()
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self.mtmd_ctx,
            self.ctx,
            chunk.ptr,
            embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            pos,
            seq,
            self.n_batch,
            ctypes.byref(new_pos),
            _NO_CALLBACK,
            None,
        )
        self.native_s += time.perf_counter() - t0
        if rc != 0:
            raise EngineError(f"decoding an image into the context failed (code {rc}){_detail()}", hint=_CTX_HINT)
        return int(new_pos.value)
