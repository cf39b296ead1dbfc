"""Write a tiny random-weight Qwen2.5-VL in Hugging Face format with the REAL Qwen2.5-VL tokenizer.

For servers that load Hugging Face checkpoints (vLLM): the prompt a server renders and the token
counts it reports are those of the real model, only the weights are noise. Shapes are chosen for
vLLM's CPU backend: its attention kernels take head sizes of 32, 64, ... (16 starts, then the first
request kills the engine), so the text model has head_dim 32 and the vision tower too.

Run with an interpreter that has torch and transformers (the vLLM environment has both)::

    python -I tiny_hf_qwen.py TOKENIZER_DIR OUT_DIR

TOKENIZER_DIR holds vocab.json, merges.txt, tokenizer_config.json, chat_template.json and
preprocessor_config.json (shared/data/qwen2.5-vl/). It imports nothing from thyme on purpose.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json")
VOCAB = 151936  # the 3B's padded embedding rows (151,665 real tokens)
DONE = "tiny-hf-qwen.json"


def build(tokenizer_dir: Path, out: Path, *, seed: int = 0) -> None:
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")

    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out / name)
    template = json.loads((tokenizer_dir / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    # The tokenizer config carries the text-only template; the VL one places images in any message.
    tcfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    tcfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2), encoding="utf-8")
    (out / "chat_template.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    pre = json.loads((tokenizer_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    pre["max_pixels"] = 28 * 28 * 1280  # a tiny model has no use for 16k-token images
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2), encoding="utf-8")

    ref = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    ids = {
        k: ref[k]
        for k in (
            "bos_token_id",
            "eos_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "image_token_id",
            "video_token_id",
        )
    }
    text_config = {
        "vocab_size": VOCAB,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "rope_theta": 1000000.0,  # head_dim/2 = 16
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["bos_token_id"],
        "use_sliding_window": False,
        "sliding_window": 8192,
        "max_window_layers": 2,
    }
    vision_config = {
        "depth": 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "out_hidden_size": 128,
        "fullatt_block_indexes": [1, 3],
        "hidden_act": "silu",
        "tokens_per_second": 2,
    }
    config = transformers.Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():  # wider than the default init, so sampling at a temperature really varies
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1 if "visual" in name else 0.2)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.05)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    cfg.setdefault("architectures", ["Qwen2_5_VLForConditionalGeneration"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (out / DONE).write_text(json.dumps({"seed": seed, "vocab": VOCAB}), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -I tiny_hf_qwen.py TOKENIZER_DIR OUT_DIR")
    build(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
