"""A tiny random-weight Qwen2.5-VL checkpoint and its transformers outputs, for checking conversions.

Runs INSIDE the converter environment (torch, transformers, tokenizers, pillow), as a script:

    python -I tiny.py build OUT_DIR
    python -I tiny.py reference CKPT_DIR REQUEST.json OUT.npz

``build`` writes everything a real checkpoint has (config.json with the architecture at the top
level, safetensors, a byte-level BPE tokenizer with Qwen2's pre-tokenizer and special tokens,
preprocessor_config.json), small enough to convert in seconds. The dimensions respect what
llama.cpp assumes of Qwen2.5-VL: vision depth >= 3, window_size 112, window attention with
periodic full-attention blocks. Weights are drawn with std 0.2 so logits are far from flat and a
conversion error shows.

``reference`` runs the transformers forward pass on the token ids and image the caller gives
(REQUEST.json: ``text_ids``, ``tokenize``, ``image``, ``mm_before``, ``mm_after``) and saves what
llama.cpp must reproduce: per-position text logits, the merged image embeddings, the last logits of
an image+text sequence (M-RoPE positions), and the tokenizer's ids for a string.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
VOCAB_SIZE = 384  # model rows; the tokenizer has fewer (the converter pads the rest)
CORPUS = (
    "Hello world! What is written on the sign in this picture? The answer is 42.",
    "Thyme writes Python code to crop, rotate, zoom and enhance images before it answers.",
    "Read the serial number: SN-2048-XK7. Total amount: $13.75, paid 2024-05-01.",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _import(name: str) -> Any:
    return importlib.import_module(name)


def _qwen2_split_regex() -> str:
    """The pattern convert_worker recognises as Qwen2's (one definition, loaded by file path)."""
    spec = importlib.util.spec_from_file_location("_thyme_convert_worker", Path(__file__).with_name("worker.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.QWEN2_SPLIT_REGEX)


def build_tokenizer(out: Path) -> dict[str, int]:
    """A byte-level BPE tokenizer shaped like Qwen2's; returns the special token ids."""
    tk = _import("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tokenizer.normalizer = tk.normalizers.NFC()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(_qwen2_split_regex()), behavior="isolated", invert=False),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = tk.decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=320,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(list(CORPUS) * 10, trainer=trainer)
    tokenizer.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    if max(ids.values()) >= VOCAB_SIZE:
        raise RuntimeError(f"tokenizer too large for the tiny vocab: {ids}")
    fast = _import("transformers").PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(tokenizer_class="Qwen2Tokenizer", add_prefix_space=False, split_special_tokens=False)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return ids


def build_model(out: Path, ids: dict[str, int], seed: int) -> int:
    """Random Qwen2.5-VL weights (std 0.2) saved as safetensors; returns the parameter count."""
    token_ids = config_token_ids(ids)
    config = qwen25vl_config(vocab=VOCAB_SIZE, hidden=64, context=4096, token_ids=token_ids, tie=False)
    model = random_qwen25vl(config, seed)
    save_checkpoint(model, out)
    return int(sum(p.numel() for p in model.parameters()))


# The tiny Qwen2.5-VL builders (this one, devtools/tiny_hf_qwen.py and tests/parity_reference.py, which
# load this file by its path) share the shapes below: 2 text layers of 4 heads (2 KV heads), a vision
# tower of depth 4 with 2 heads, the vision width half the text width. They differ in vocabulary,
# width, context and whether the embeddings are tied.
MM_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def config_token_ids(special: dict[str, int]) -> dict[str, int]:
    """The config's token ids (bos/eos and MM_TOKEN_IDS) from the special tokens' ids."""
    names = {
        "bos_token_id": "<|endoftext|>",
        "eos_token_id": "<|im_end|>",
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: special[token] for key, token in names.items()}


def qwen25vl_config(*, vocab: int, hidden: int, context: int, token_ids: dict[str, int], tie: bool) -> Any:
    """A Qwen2.5-VL config of the tiny shape; ``token_ids`` holds bos/eos and MM_TOKEN_IDS (config names)."""
    text = _text_config(vocab=vocab, hidden=hidden, context=context, token_ids=token_ids, tie=tie)
    mm_ids = {k: token_ids[k] for k in MM_TOKEN_IDS}
    return _import("transformers").Qwen2_5_VLConfig(
        text_config=text, vision_config=_vision_config(hidden), tie_word_embeddings=tie, **mm_ids
    )


def _text_config(*, vocab: int, hidden: int, context: int, token_ids: dict[str, int], tie: bool) -> dict[str, Any]:
    """The language model: 2 layers, 4 heads (2 KV heads), M-RoPE."""
    half_head = hidden // 4 // 2  # M-RoPE splits head_dim / 2 into temporal, height and width sections
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=tie,
        rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "mrope_section": [half_head // 4, half_head * 3 // 8, half_head * 3 // 8]},
        bos_token_id=token_ids["bos_token_id"],
        eos_token_id=token_ids["eos_token_id"],
        pad_token_id=token_ids["bos_token_id"],
        use_sliding_window=False,
        sliding_window=context,
        max_window_layers=2,
    )


def _vision_config(hidden: int) -> dict[str, Any]:
    """The vision tower: 4 blocks (two with full attention), 14-pixel patches merged 2x2."""
    return dict(
        depth=4,
        hidden_size=hidden // 2,
        intermediate_size=hidden,
        num_heads=2,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=hidden,
        fullatt_block_indexes=[1, 3],
        hidden_act="silu",
        tokens_per_second=2,
    )


def random_qwen25vl(config: Any, seed: int) -> Any:
    """The model with weights drawn wider than the default init (matrices std 0.2, the vision tower's
    0.1), so logits are far from flat: a conversion error shows and sampling at a temperature varies."""
    torch = _import("torch")
    torch.manual_seed(seed)
    model = _import("transformers").Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1 if "visual" in name else 0.2)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.05)
    return model


def save_checkpoint(model: Any, out: Path) -> None:
    """Safetensors and a config.json that names the architecture at the top level, as real ones do."""
    model.save_pretrained(out, safe_serialization=True)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    saved.setdefault("architectures", ["Qwen2_5_VLForConditionalGeneration"])
    (out / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")


def build(out: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(out)
    n_params = build_model(out, ids, seed)
    processor = _import("transformers").Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    processor.save_pretrained(out)
    print(json.dumps({"out": str(out), "params": n_params, "special_ids": ids}))


def _image_features(model: Any, pixel_values: Any, grid: Any) -> Any:
    """Merged image embeddings of one image (transformers 4.57 returns a tuple, 5.x an output object)."""
    out = model.model.get_image_features(pixel_values, grid)
    parts = out.pooler_output if hasattr(out, "pooler_output") else out
    return parts[0]


def reference(ckpt: Path, request_path: Path, out_path: Path) -> None:
    torch = _import("torch")
    tf = _import("transformers")
    np = _import("numpy")
    image_mod = _import("PIL.Image")
    request = json.loads(request_path.read_text(encoding="utf-8"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    config = model.config
    results: dict[str, Any] = {}
    with torch.no_grad():
        ids = torch.tensor([request["text_ids"]])
        logits = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=torch.zeros_like(ids)
        ).logits
        results["text_logits"] = logits[0].float().numpy()

        processor = tf.AutoImageProcessor.from_pretrained(ckpt)
        image = image_mod.open(request["image"]).convert("RGB")
        pixels = processor(images=[image], return_tensors="pt")
        embd = _image_features(model, pixels["pixel_values"], pixels["image_grid_thw"])
        results["image_embd"] = embd.float().numpy()
        results["image_grid_thw"] = pixels["image_grid_thw"][0].numpy()

        n_image = int(embd.shape[0])
        mm_ids = request["mm_before"] + [config.image_token_id] * n_image + request["mm_after"]
        types = [0] * len(request["mm_before"]) + [1] * n_image + [0] * len(request["mm_after"])
        mm = torch.tensor([mm_ids])
        out = model(
            input_ids=mm,
            attention_mask=torch.ones_like(mm),
            mm_token_type_ids=torch.tensor([types]),
            pixel_values=pixels["pixel_values"],
            image_grid_thw=pixels["image_grid_thw"],
        )
        results["mm_last_logits"] = out.logits[0, -1].float().numpy()
    tokenizer = tf.AutoTokenizer.from_pretrained(ckpt)
    results["tokenized"] = np.array(tokenizer.encode(request["tokenize"], add_special_tokens=False), dtype=np.int64)
    np.savez(out_path, **results)
    print(json.dumps({"saved": str(out_path), "image_tokens": n_image}))


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "build":
        build(Path(argv[1]))
    elif len(argv) == 4 and argv[0] == "reference":
        reference(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
