"""Random-weight GGUF pairs with the exact shapes of Qwen2.5-VL-3B and -7B (needs the `dev` extra: gguf).

Speed and memory do not depend on weight values, so a pair with the real shapes, the real
tensor types of a ``Q4_K_M`` download and the real tokenizer measures what a question costs on
the real model. The language model's quantized blocks are written directly (random bits with
sane f16 super-block scales) instead of quantizing ~30 GB of f32, so the 3B pair builds in a
minute or two on 2 cores. The projector is f16 (1-D tensors f32), as the published
``mmproj-*-f16.gguf`` files are.

Per-tensor types follow llama.cpp's Q4_K_M rule (llama-quant.cpp): Q4_K everywhere, Q6_K for
``attn_v`` and ``ffn_down`` on the "more bits" layers, Q6_K for the output matrix (which is
the token embedding when it is tied, as in 3B), f32 for norms and biases.

Usage: ``python -m thyme_cli.devtools.real_shape_gguf 3b|7b [--out DIR]``; pairs are cached
under ``~/.cache/thyme-bench/`` (never in the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thyme_cli.devtools.tiny_gguf import ClipTower, TextShape, add_clip_header, add_text_header

# Bump when the files' content changes, so stale cached pairs are rebuilt.
FORMAT_VERSION = 1
DATA_DIR_ENV = "THYME_QWEN_DATA"


@dataclass(frozen=True)
class Shape:
    """The language model's dimensions (Qwen2.5-VL config.json); the vision tower is shared."""

    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    tied_embeddings: bool


SHAPES = {
    "3b": Shape(
        "3b", n_embd=2048, n_layer=36, n_head=16, n_head_kv=2, n_ff=11008, n_vocab=151936, tied_embeddings=True
    ),
    "7b": Shape(
        "7b", n_embd=3584, n_layer=28, n_head=28, n_head_kv=4, n_ff=18944, n_vocab=152064, tied_embeddings=False
    ),
}
# Qwen2.5-VL's vision tower (both sizes): 32 blocks, window attention except blocks 7/15/23/31.
V_LAYERS, V_EMBD, V_HEADS, V_FF, PATCH, MERGE = 32, 1280, 16, 3420, 14, 2
FULL_ATTENTION_EVERY = 8  # blocks 7, 15, 23, 31 ((i + 1) % 8 == 0)
N_CTX_TRAIN = 128000
ROPE_SECTIONS = [16, 24, 24, 0]
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# ggml block layouts: (values per block, bytes per block, byte offsets of the f16 scales to set).
_Q4_K = (256, 144, (0, 2))  # d, dmin, scales[12], qs[128]
_Q6_K = (256, 210, (208,))  # ql[128], qh[64], scales[16], d


@dataclass(frozen=True)
class RealPair:
    model: Path
    mmproj: Path


def data_dir() -> Path:
    """The real Qwen2.5-VL tokenizer files (vocab.json, merges.txt, tokenizer_config.json, ...)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "qwen2.5-vl"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"the Qwen2.5-VL tokenizer files were not found; set {DATA_DIR_ENV} to the folder holding vocab.json"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "thyme-bench"


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's Q4_K_M rule for the layers whose attn_v / ffn_down get Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def text_tensor_plan(shape: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape (rows, cols), type) of every language-model tensor, in file order."""
    e, kv = shape.n_embd, shape.n_head_kv * (shape.n_embd // shape.n_head)
    plan: list[tuple[str, tuple[int, ...], str]] = [
        ("token_embd.weight", (shape.n_vocab, e), "q6_k" if shape.tied_embeddings else "q4_k"),
    ]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        more = _use_more_bits(i, shape.n_layer)
        plan += [
            (p + "attn_norm.weight", (e,), "f32"),
            (p + "attn_q.weight", (e, e), "q4_k"),
            (p + "attn_q.bias", (e,), "f32"),
            (p + "attn_k.weight", (kv, e), "q4_k"),
            (p + "attn_k.bias", (kv,), "f32"),
            (p + "attn_v.weight", (kv, e), "q6_k" if more else "q4_k"),
            (p + "attn_v.bias", (kv,), "f32"),
            (p + "attn_output.weight", (e, e), "q4_k"),
            (p + "ffn_norm.weight", (e,), "f32"),
            (p + "ffn_gate.weight", (shape.n_ff, e), "q4_k"),
            (p + "ffn_up.weight", (shape.n_ff, e), "q4_k"),
            (p + "ffn_down.weight", (e, shape.n_ff), "q6_k" if more else "q4_k"),
        ]
    plan.append(("output_norm.weight", (e,), "f32"))
    if not shape.tied_embeddings:
        plan.append(("output.weight", (shape.n_vocab, e), "q6_k"))
    return plan


def vision_tensor_plan(proj_dim: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape, type) of every projector tensor: f16 matrices, f32 vectors."""
    plan: list[tuple[str, tuple[int, ...], str]] = [
        ("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), "f16"),
        ("v.patch_embd.weight.1", (V_EMBD, 3, PATCH, PATCH), "f16"),
    ]
    for i in range(V_LAYERS):
        p = f"v.blk.{i}."
        plan += [(p + "ln1.weight", (V_EMBD,), "f32"), (p + "ln2.weight", (V_EMBD,), "f32")]
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            plan += [(p + name + ".weight", (V_EMBD, V_EMBD), "f16"), (p + name + ".bias", (V_EMBD,), "f32")]
        for name, rows, cols in (("ffn_gate", V_FF, V_EMBD), ("ffn_up", V_FF, V_EMBD), ("ffn_down", V_EMBD, V_FF)):
            plan += [(p + name + ".weight", (rows, cols), "f16"), (p + name + ".bias", (rows,), "f32")]
    merged = V_EMBD * MERGE * MERGE
    plan += [
        ("v.post_ln.weight", (V_EMBD,), "f32"),
        ("mm.0.weight", (merged, merged), "f16"),
        ("mm.0.bias", (merged,), "f32"),
        ("mm.2.weight", (proj_dim, merged), "f16"),
        ("mm.2.bias", (proj_dim,), "f32"),
    ]
    return plan


class _Filler:
    """Random tensor contents, fast: quantized blocks from random bytes with fixed-size scales,
    floats tiled from one random pool (values do not change the cost of a matmul)."""

    def __init__(self, seed: int) -> None:
        import numpy as np

        self.np = np
        self.rng = np.random.default_rng(seed)
        self.pool = (self.rng.standard_normal(1 << 20) * 0.02).astype(np.float32)

    def tensor(self, shape: tuple[int, ...], kind: str) -> Any:
        np = self.np
        if kind in ("q4_k", "q6_k"):
            per_block, block_bytes, scales = _Q4_K if kind == "q4_k" else _Q6_K
            rows, cols = shape
            if cols % per_block:
                raise ValueError(f"{cols} columns are not a multiple of {per_block}")
            n_blocks = rows * cols // per_block
            raw = np.frombuffer(self.rng.bytes(n_blocks * block_bytes), np.uint8).reshape(n_blocks, block_bytes).copy()
            # Small normal f16 scales keep every dequantized weight finite and modest.
            scale = np.frombuffer(np.float16(2e-4).tobytes(), np.uint8)
            for off in scales:
                raw[:, off : off + 2] = scale
            return raw.reshape(rows, cols // per_block * block_bytes)
        n = int(np.prod(shape))
        if kind == "ones":
            return np.ones(n, np.float32)
        start = int(self.rng.integers(0, self.pool.size))
        flat = np.resize(np.roll(self.pool, -start), n)
        return flat.astype(np.float16 if kind == "f16" else np.float32).reshape(shape)


def _write(
    path: Path,
    arch: str,
    add_meta: Callable[[Any], None],
    plan: list[tuple[str, tuple[int, ...], str]],
    seed: int,
    progress: Callable[[str], None],
) -> None:
    """Stream a GGUF: header and tensor infos first, then each tensor as it is generated."""
    import gguf
    import numpy as np

    tmp = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    add_meta(writer)
    raw_types = {"q4_k": gguf.GGMLQuantizationType.Q4_K, "q6_k": gguf.GGMLQuantizationType.Q6_K}
    for name, shape, kind in plan:
        if kind in raw_types:
            per_block, block_bytes, _ = _Q4_K if kind == "q4_k" else _Q6_K
            byte_shape = (shape[0], shape[1] // per_block * block_bytes)
            writer.add_tensor_info(
                name, byte_shape, np.dtype(np.uint8), byte_shape[0] * byte_shape[1], raw_dtype=raw_types[kind]
            )
        else:
            dtype = np.dtype(np.float16 if kind == "f16" else np.float32)
            writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    filler = _Filler(seed)
    for i, (name, shape, kind) in enumerate(plan):
        fill_kind = "ones" if kind == "f32" and ("norm" in name or ".ln" in name) else kind
        writer.write_tensor_data(filler.tensor(shape, fill_kind))
        if i % 50 == 0:
            progress(f"{path.name}: {i + 1}/{len(plan)} tensors")
    writer.close()
    tmp.replace(path)


def _tokenizer_meta(writer: Any, data: Path, n_vocab: int) -> None:
    """The real Qwen2.5 BPE vocabulary, merges, special tokens and chat template."""
    import gguf

    vocab: dict[str, int] = json.loads((data / "vocab.json").read_text("utf-8"))
    config = json.loads((data / "tokenizer_config.json").read_text("utf-8"))
    added = {int(k): v for k, v in config["added_tokens_decoder"].items()}
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i in added:
            tok = added[i]["content"]
            special = added[i].get("special") or (tok.startswith("<|") and tok.endswith("|>"))
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # the embedding rows past the tokenizer: padding, as llama.cpp's converter writes them
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [
        line
        for line in (data / "merges.txt").read_text("utf-8").splitlines()
        if line and not line.startswith("#version")
    ]
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(ids["<|im_end|>"])
    writer.add_pad_token_id(ids["<|endoftext|>"])
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(json.loads((data / "chat_template.json").read_text("utf-8"))["chat_template"])


def write_text_model(
    path: Path,
    shape: Shape,
    *,
    data: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The `qwen2vl` language model at Q4_K_M with the real tokenizer."""
    import gguf

    def meta(writer: Any) -> None:
        writer.add_name(f"random-qwen2.5-vl-{shape.name}-shape")
        text = TextShape(
            N_CTX_TRAIN, shape.n_embd, shape.n_layer, shape.n_ff, shape.n_head, shape.n_head_kv, 1e6, ROPE_SECTIONS
        )
        add_text_header(writer, text)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
        _tokenizer_meta(writer, data or data_dir(), shape.n_vocab)

    _write(path, "qwen2vl", meta, text_tensor_plan(shape), seed, progress)
    return path


def write_projector(
    path: Path, shape: Shape, *, seed: int = 1, progress: Callable[[str], None] = lambda _m: None
) -> Path:
    """The f16 `qwen2.5vl_merger` projector (32-block ViT, window attention, patch merger)."""
    import gguf

    def meta(writer: Any) -> None:
        writer.add_name(f"random-qwen2.5-vl-{shape.name}-shape-mmproj")
        tower = ClipTower(shape.n_embd, 560, PATCH, V_EMBD, V_FF, V_LAYERS, V_HEADS, IMAGE_MEAN, IMAGE_STD)
        add_clip_header(writer, "qwen2.5vl_merger", tower)
        writer.add_vision_use_silu(True)
        writer.add_vision_n_wa_pattern(FULL_ATTENTION_EVERY)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    _write(path, "clip", meta, vision_tensor_plan(shape.n_embd), seed, progress)
    return path


def pair_paths(size: str, out_dir: Path | None = None) -> RealPair:
    base = (out_dir or cache_dir()) / f"qwen2.5-vl-{size}-random-v{FORMAT_VERSION}"
    return RealPair(
        model=base / f"Qwen2.5-VL-{size.upper()}-random-Q4_K_M.gguf",
        mmproj=base / f"mmproj-Qwen2.5-VL-{size.upper()}-random-f16.gguf",
    )


def ensure_pair(
    size: str, out_dir: Path | None = None, *, progress: Callable[[str], None] = lambda _m: None
) -> RealPair:
    """The cached pair for ``size`` ("3b" or "7b"), written first if missing."""
    shape = SHAPES[size]
    pair = pair_paths(size, out_dir)
    pair.model.parent.mkdir(parents=True, exist_ok=True)
    if not pair.model.exists():
        write_text_model(pair.model, shape, progress=progress)
    if not pair.mmproj.exists():
        write_projector(pair.mmproj, shape, progress=progress)
    return pair


def _tensor_bytes(plan: list[tuple[str, tuple[int, ...], str]]) -> Iterator[int]:
    for _name, shape, kind in plan:
        n = 1
        for d in shape:
            n *= d
        if kind in ("q4_k", "q6_k"):
            per_block, block_bytes, _ = _Q4_K if kind == "q4_k" else _Q6_K
            yield n // per_block * block_bytes
        else:
            yield n * (2 if kind == "f16" else 4)


def weight_bytes(size: str) -> dict[str, int]:
    """Bytes of the language model's weights: all of them, and those one decoded token reads
    (every matrix but the token embedding, of which only one row is read)."""
    shape = SHAPES[size]
    plan = text_tensor_plan(shape)
    sizes = dict(zip((p[0] for p in plan), _tensor_bytes(plan), strict=True))
    total = sum(sizes.values())
    per_token = total - (0 if shape.tied_embeddings else sizes["token_embd.weight"])
    return {"total": total, "per_token": per_token, "projector": sum(_tensor_bytes(vision_tensor_plan(shape.n_embd)))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("size", choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, default=None, help="folder (default ~/.cache/thyme-bench)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    pair = ensure_pair(args.size, args.out, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(pair.model)
    print(pair.mmproj)
    print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
