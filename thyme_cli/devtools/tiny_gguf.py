"""Tiny random-weight GGUF models for offline tests and benchmarks (needs the `dev` extra: gguf).

No machine in CI reaches the Hugging Face Hub, so tests build a few-hundred-KB model pair at test
time and run the REAL llama.cpp path on it: a `qwen2vl` language model (M-RoPE, ChatML specials,
byte-level BPE vocab) and a `qwen2.5vl_merger` vision projector, the same architecture pair as
Qwen2.5-VL and Thyme. The text they produce is noise; the shapes, positions and code paths are real.

Usage: ``python -m thyme_cli.devtools.tiny_gguf OUTDIR`` or ``write_tiny_pair(OUTDIR)``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHATML_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)

# A ChatML template (what Qwen2.5-VL GGUFs carry), so chat-template code paths can run on it.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyPair:
    model: Path
    mmproj: Path


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable-unicode mapping, in byte order (what a byte-level BPE vocab holds)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


class _Weights:
    """Seeded random tensors; std ~0.2 keeps the logits far from flat."""

    def __init__(self, seed: int, std: float) -> None:
        import numpy as np

        self.np = np
        self.rng = np.random.default_rng(seed)
        self.std = std

    def rand(self, *shape: int) -> Any:
        return (self.rng.standard_normal(shape) * self.std).astype(self.np.float32)

    def ones(self, n: int) -> Any:
        return self.np.ones(n, self.np.float32)


def _add_vocab(writer: Any, gguf: Any, chat_template: str) -> int:
    tokens = _byte_level_alphabet()
    merges = ["Ġ t", "Ġ a", "h e", "i n"]
    tokens += [m.replace(" ", "") for m in merges]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for special in CHATML_SPECIALS:
        tokens.append(special)
        types.append(gguf.TokenType.CONTROL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)
    return len(tokens)


def write_text_model(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 32768,
    seed: int = 0,
    std: float = 0.2,
    chat_template: str = CHATML_TEMPLATE,
) -> Path:
    """A `qwen2vl` language model (M-RoPE sections sum to head_dim/2, as in Qwen2.5-VL)."""
    import gguf

    w = _Weights(seed, std)
    writer = gguf.GGUFWriter(str(path), "qwen2vl")
    writer.add_name("tiny-qwen2vl")
    n_vocab = _add_vocab(writer, gguf, chat_template)
    head_dim = n_embd // n_head
    text = TextShape(n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv, 10000.0, _mrope_sections(head_dim))
    add_text_header(writer, text)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_text_tensors(
        writer, w, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, kv_dim=n_head_kv * head_dim, n_ff=n_ff
    )
    _finish(writer)
    return path


@dataclass(frozen=True)
class TextShape:
    """What a `qwen2vl` language model's header states (real_shape_gguf.py writes the same header)."""

    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    rope_base: float
    rope_sections: list[int]


def add_text_header(writer: Any, text: TextShape) -> None:
    """The language model's dimensions and rope sections (their order is part of the file's bytes)."""
    writer.add_context_length(text.n_ctx_train)
    writer.add_embedding_length(text.n_embd)
    writer.add_block_count(text.n_layer)
    writer.add_feed_forward_length(text.n_ff)
    writer.add_head_count(text.n_head)
    writer.add_head_count_kv(text.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(text.rope_base)
    writer.add_rope_dimension_sections(text.rope_sections)


def _mrope_sections(head_dim: int) -> list[int]:
    """Temporal, height and width sections of head_dim / 2 (and an unused fourth), as Qwen2.5-VL splits them."""
    quarter = head_dim // 2
    sections = [quarter // 4, (quarter - quarter // 4) // 2]
    sections.append(quarter - sum(sections))
    return [*sections, 0]


def _add_text_tensors(
    writer: Any, w: _Weights, *, n_vocab: int, n_embd: int, n_layer: int, kv_dim: int, n_ff: int
) -> None:
    writer.add_tensor("token_embd.weight", w.rand(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", w.ones(n_embd))
    writer.add_tensor("output.weight", w.rand(n_vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", w.ones(n_embd))
        writer.add_tensor(p + "attn_q.weight", w.rand(n_embd, n_embd))
        writer.add_tensor(p + "attn_k.weight", w.rand(kv_dim, n_embd))
        writer.add_tensor(p + "attn_v.weight", w.rand(kv_dim, n_embd))
        writer.add_tensor(p + "attn_q.bias", w.rand(n_embd))
        writer.add_tensor(p + "attn_k.bias", w.rand(kv_dim))
        writer.add_tensor(p + "attn_v.bias", w.rand(kv_dim))
        writer.add_tensor(p + "attn_output.weight", w.rand(n_embd, n_embd))
        writer.add_tensor(p + "ffn_norm.weight", w.ones(n_embd))
        writer.add_tensor(p + "ffn_gate.weight", w.rand(n_ff, n_embd))
        writer.add_tensor(p + "ffn_up.weight", w.rand(n_ff, n_embd))
        writer.add_tensor(p + "ffn_down.weight", w.rand(n_embd, n_ff))


@dataclass(frozen=True)
class ClipTower:
    """A vision tower's shape: what the clip header states and the tensors follow."""

    proj_dim: int
    image_size: int
    patch: int
    v_embd: int
    v_ff: int
    v_layers: int
    v_heads: int
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def add_clip_header(writer: Any, projector_type: str, tower: ClipTower) -> None:
    """The header every clip projector shares (real_shape_gguf.py's too); what follows is the projector's own."""
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(projector_type)
    writer.add_vision_projection_dim(tower.proj_dim)
    writer.add_vision_image_size(tower.image_size)
    writer.add_vision_patch_size(tower.patch)
    writer.add_vision_embedding_length(tower.v_embd)
    writer.add_vision_feed_forward_length(tower.v_ff)
    writer.add_vision_block_count(tower.v_layers)
    writer.add_vision_head_count(tower.v_heads)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean(list(tower.image_mean))
    writer.add_vision_image_std(list(tower.image_std))


def _clip_writer(path: Path, projector_type: str, tower: ClipTower) -> Any:
    import gguf

    writer = gguf.GGUFWriter(str(path), "clip")
    add_clip_header(writer, projector_type, tower)
    return writer


def _add_vision_attention(writer: Any, w: _Weights, prefix: str, v_embd: int) -> None:
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        writer.add_tensor(prefix + name + ".weight", w.rand(v_embd, v_embd))
        writer.add_tensor(prefix + name + ".bias", w.rand(v_embd))


def write_qwen25vl_projector(
    path: Path,
    *,
    proj_dim: int = 64,
    patch: int = 14,
    v_embd: int = 32,
    v_ff: int = 48,
    v_layers: int = 2,
    v_heads: int = 2,
    seed: int = 1,
    std: float = 0.2,
) -> Path:
    """A `qwen2.5vl_merger` clip projector: 14 px patches, 2x2 merge (one token per 28x28 px)."""
    import gguf

    w = _Weights(seed, std)
    writer = _clip_writer(path, "qwen2.5vl_merger", ClipTower(proj_dim, 560, patch, v_embd, v_ff, v_layers, v_heads))
    writer.add_vision_use_silu(True)
    writer.add_vision_n_wa_pattern(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # The Conv3D patch embedding (temporal patch 2) is stored as two Conv2D kernels.
    writer.add_tensor("v.patch_embd.weight", w.rand(v_embd, 3, patch, patch))
    writer.add_tensor("v.patch_embd.weight.1", w.rand(v_embd, 3, patch, patch))
    for i in range(v_layers):
        p = f"v.blk.{i}."
        writer.add_tensor(p + "ln1.weight", w.ones(v_embd))
        writer.add_tensor(p + "ln2.weight", w.ones(v_embd))
        _add_vision_attention(writer, w, p, v_embd)
        for name, shape in (("ffn_gate", (v_ff, v_embd)), ("ffn_up", (v_ff, v_embd)), ("ffn_down", (v_embd, v_ff))):
            writer.add_tensor(p + name + ".weight", w.rand(*shape))
            writer.add_tensor(p + name + ".bias", w.rand(shape[0]))
    writer.add_tensor("v.post_ln.weight", w.ones(v_embd))
    writer.add_tensor("mm.0.weight", w.rand(4 * v_embd, 4 * v_embd))
    writer.add_tensor("mm.0.bias", w.rand(4 * v_embd))
    writer.add_tensor("mm.2.weight", w.rand(proj_dim, 4 * v_embd))
    writer.add_tensor("mm.2.bias", w.rand(proj_dim))
    _finish(writer)
    return path


def write_gemma3_projector(
    path: Path,
    *,
    proj_dim: int = 640,
    image_size: int = 224,
    patch: int = 14,
    merge: int = 4,
    v_embd: int = 32,
    v_ff: int = 48,
    v_layers: int = 2,
    v_heads: int = 2,
    seed: int = 2,
    std: float = 0.2,
) -> Path:
    """A `gemma3` clip projector (SigLIP tower, average pool by ``merge``, RMS norm, projection) of
    any text width: paired with a Gemma 3 language model (``proj_dim`` = its embedding length, 640
    for Gemma 3 270M). A 224 px image is 16x16 patches, pooled to 4x4 = 16 image tokens."""
    import gguf

    w = _Weights(seed, std)
    tower = ClipTower(proj_dim, image_size, patch, v_embd, v_ff, v_layers, v_heads)
    writer = _clip_writer(path, "gemma3", tower)
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(merge)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("v.patch_embd.weight", w.rand(v_embd, 3, patch, patch))
    writer.add_tensor("v.patch_embd.bias", w.rand(v_embd))
    writer.add_tensor("v.position_embd.weight", w.rand((image_size // patch) ** 2, v_embd))
    for i in range(v_layers):
        _add_siglip_block(writer, w, f"v.blk.{i}.", tower)
    writer.add_tensor("v.post_ln.weight", w.ones(v_embd))
    writer.add_tensor("v.post_ln.bias", w.rand(v_embd))
    writer.add_tensor("mm.soft_emb_norm.weight", w.ones(v_embd))
    writer.add_tensor("mm.input_projection.weight", w.rand(v_embd, proj_dim))
    _finish(writer)
    return path


def _add_siglip_block(writer: Any, w: _Weights, p: str, tower: ClipTower) -> None:
    """One SigLIP encoder block: biased layer norms, attention and a two-matrix MLP."""
    v_embd, v_ff = tower.v_embd, tower.v_ff
    for norm in ("ln1", "ln2"):
        writer.add_tensor(p + norm + ".weight", w.ones(v_embd))
        writer.add_tensor(p + norm + ".bias", w.rand(v_embd))
    _add_vision_attention(writer, w, p, v_embd)
    writer.add_tensor(p + "ffn_up.weight", w.rand(v_ff, v_embd))
    writer.add_tensor(p + "ffn_up.bias", w.rand(v_ff))
    writer.add_tensor(p + "ffn_down.weight", w.rand(v_embd, v_ff))
    writer.add_tensor(p + "ffn_down.bias", w.rand(v_embd))


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_pair(out_dir: Path, *, prefix: str = "tiny", chat_template: str = CHATML_TEMPLATE) -> TinyPair:
    """Write a matching text model + projector pair into out_dir and return their paths."""
    return _write_pair(out_dir, prefix, chat_template, width=64)


def _write_pair(out_dir: Path, prefix: str, chat_template: str, *, width: int, quant: str | None = None) -> TinyPair:
    """A text model ``width`` wide (4 heads, 2 KV heads, FFN twice as wide), quantized to ``quant``
    when one is given, and a qwen2.5vl projector into the same width."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-qwen2vl.gguf" if quant is None else f"{prefix}-f32.gguf"
    model = write_text_model(
        out_dir / name, n_embd=width, n_head=4, n_head_kv=2, n_ff=2 * width, chat_template=chat_template
    )
    if quant is not None:
        f32, model = model, quantize_gguf(model, out_dir / f"{prefix}-qwen2vl-{quant}.gguf", quant)
        f32.unlink()
    mmproj = write_qwen25vl_projector(out_dir / f"{prefix}-mmproj-qwen25vl.gguf", proj_dim=width)
    return TinyPair(model=model, mmproj=mmproj)


# llama_ftype ids (llama.h) of the quantizations the quantized tiny pair can take.
QUANT_FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "Q6_K": 18}


def quantize_gguf(src: Path, dst: Path, quant: str) -> Path:
    """Quantize with llama.cpp's own llama_model_quantize (what `thyme models convert` uses)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize could not make {quant} from {src}")
    return dst


def write_quantized_pair(
    out_dir: Path, quant: str = "Q4_K_M", *, prefix: str = "tiny-quant", chat_template: str = CHATML_TEMPLATE
) -> TinyPair:
    """A quantized tiny pair: every width a multiple of 256, so K-quants (Q4_K, Q6_K) apply to all
    the matrices and the suite runs llama.cpp's quantized CPU kernels (and their buffer types)."""
    return _write_pair(out_dir, prefix, chat_template, width=256, quant=quant)


if __name__ == "__main__":
    pair = write_tiny_pair(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(pair.model)
    print(pair.mmproj)
