"""Write a tiny random-weight Qwen2.5-VL in Hugging Face format with the REAL Qwen2.5-VL tokenizer.

For servers that load Hugging Face checkpoints (vLLM): the prompt a server renders and the token
counts it reports are those of the real model, only the weights are noise. Shapes are chosen for
vLLM's CPU backend: its attention kernels take head sizes of 32, 64, ... (16 starts, then the first
request kills the engine), so the text model has head_dim 32 and the vision tower too.

Run with an interpreter that has torch and transformers (the vLLM environment has both)::

    python -I tiny_hf_qwen.py TOKENIZER_DIR OUT_DIR

TOKENIZER_DIR holds vocab.json, merges.txt, tokenizer_config.json, chat_template.json and
preprocessor_config.json (shared/data/qwen2.5-vl/). It imports nothing from thyme on purpose: the model's
shape and weights come from models/convert/tiny.py, loaded by its file path.
"""

from __future__ import annotations

import importlib
import importlib.util
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
    tiny = _convert_tiny()
    out.mkdir(parents=True, exist_ok=True)
    _copy_tokenizer(tokenizer_dir, out)
    ref = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    token_ids = {k: ref[k] for k in ("bos_token_id", "eos_token_id", *tiny.MM_TOKEN_IDS)}
    # head_dim 32 in the text model and the vision tower (vLLM's CPU kernels take 32, 64, ...).
    config = tiny.qwen25vl_config(vocab=VOCAB, hidden=128, context=8192, token_ids=token_ids, tie=True)
    model = tiny.random_qwen25vl(config, seed)
    tiny.save_checkpoint(model.to(torch.bfloat16), out)
    (out / DONE).write_text(json.dumps({"seed": seed, "vocab": VOCAB}), encoding="utf-8")


def _convert_tiny() -> Any:
    """The converter's tiny-model builder (models/convert/tiny.py), loaded by its path: this script runs
    in another interpreter, without thyme installed."""
    path = Path(__file__).resolve().parents[1] / "models" / "convert" / "tiny.py"
    spec = importlib.util.spec_from_file_location("_thyme_convert_tiny", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    """The real tokenizer, with the VL chat template and a pixel cap fit for a tiny model."""
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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -I tiny_hf_qwen.py TOKENIZER_DIR OUT_DIR")
    build(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
