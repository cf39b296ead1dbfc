"""The transformers side of the prompt/position/logit parity checks (tests/test_prompt_parity.py).

Runs INSIDE the converter environment (torch, transformers), as a script:

    python parity_reference.py build OUT_DIR QWEN_DATA_DIR      # tiny random model, REAL vocabulary
    python parity_reference.py conversation CKPT REQUEST.json OUT.npz

`build` writes a tiny random-weight Qwen2.5-VL checkpoint whose tokenizer and processor files are
the real Qwen2.5-VL ones (vocab.json, merges.txt, tokenizer_config.json, chat_template.json,
preprocessor_config.json from ../shared/data/qwen2.5-vl), so the converter meets the real
pre-tokenizer and the model has the real vocabulary (151,936 rows).

`conversation` builds a Thyme conversation exactly as upstream's evaluation does after each of
its turns (vlmeval/vlm/thyme/model.py: messages [system, user[image, text], assistant[text,
"<sandbox_output>", image, "</sandbox_output>", text]], `apply_chat_template(tokenize=False)` with
the trailing "<|im_end|>\\n" of the open assistant turn removed, `Qwen2_5_VLProcessor(text,
images)` with the given min/max pixels), or a generic one (the observation as a user turn), and
writes for each state its input_ids, the M-RoPE positions of `get_rope_index` and the last logits.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json")
VOCAB_ROWS = 151936


def _import(name: str) -> Any:
    return importlib.import_module(name)


def build(out: Path, data: Path, seed: int = 0) -> None:
    tf = _import("transformers")
    tiny = _convert_tiny()
    out.mkdir(parents=True, exist_ok=True)
    for name in (*TOKENIZER_FILES, "preprocessor_config.json", "generation_config.json"):
        shutil.copyfile(data / name, out / name)
    tok = tf.AutoTokenizer.from_pretrained(out)
    special = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    token_ids = tiny.config_token_ids(ids)
    config = tiny.qwen25vl_config(vocab=VOCAB_ROWS, hidden=64, context=8192, token_ids=token_ids, tie=False)
    tiny.save_checkpoint(tiny.random_qwen25vl(config, seed), out)
    print(json.dumps({"out": str(out), "special_ids": ids}))


def _convert_tiny() -> Any:
    """thyme's tiny Qwen2.5-VL builder (thyme_cli/models/convert/tiny.py), loaded by its path: this script
    runs in the converter's interpreter, without thyme installed."""
    path = Path(__file__).resolve().parents[1] / "thyme_cli" / "models" / "convert" / "tiny.py"
    spec = importlib.util.spec_from_file_location("_thyme_convert_tiny", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _messages(req: dict[str, Any], state: int) -> tuple[list[dict[str, Any]], bool, int]:
    """Upstream's message list after turn ``state`` (1: user turn, 2: + code segment, 3: + the
    sandbox output with its image, 4: + the final answer); also whether a generation prompt ends
    it and how many images it holds."""
    image1 = {"type": "image", "image": req["images"][0]}
    image2 = {"type": "image", "image": req["images"][1]}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": req["system"]},
        {"role": "user", "content": [image1, {"type": "text", "text": req["user"]}]},
    ]
    if state == 1:
        return messages, True, 1
    segment1, segment2 = req["assistant"]
    observation = [{"type": "text", "text": "<sandbox_output>"}, image2, {"type": "text", "text": "</sandbox_output>"}]
    if req["protocol"] == "thyme":  # the observation inside the same assistant turn
        content: list[dict[str, Any]] = [{"type": "text", "text": segment1}]
        if state >= 3:
            content += observation
        if state >= 4:
            content.append({"type": "text", "text": segment2})
        messages.append({"role": "assistant", "content": content})
        return messages, False, 1 if state == 2 else 2
    messages.append({"role": "assistant", "content": [{"type": "text", "text": segment1}]})
    if state == 2:
        return messages, False, 1
    messages.append({"role": "user", "content": observation})
    if state == 3:
        return messages, True, 2
    messages.append({"role": "assistant", "content": [{"type": "text", "text": segment2}]})
    return messages, False, 2


def _processor(tf: Any, ckpt: Path, min_pixels: int, max_pixels: int) -> Any:
    """Qwen2_5_VLProcessor from the checkpoint's files, with Thyme's min/max pixels.

    Built by hand because AutoProcessor also loads the video processor, which needs torchvision
    (not in the converter environment); the subclass only skips the class check of that unused
    video processor. Tokenizing, image processing and pad expansion are transformers' own. The
    image processor is the PIL one (what transformers itself falls back to without torchvision).
    """

    class Processor(tf.Qwen2_5_VLProcessor):  # type: ignore[misc, name-defined]
        def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    image_processor = tf.Qwen2VLImageProcessorPil.from_pretrained(ckpt, min_pixels=min_pixels, max_pixels=max_pixels)
    tokenizer = tf.AutoTokenizer.from_pretrained(ckpt)
    template = json.loads((ckpt / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    return Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template)


def conversation(ckpt: Path, request_path: Path, out_path: Path) -> None:
    torch = _import("torch")
    tf = _import("transformers")
    np = _import("numpy")
    image_mod = _import("PIL.Image")
    req = json.loads(request_path.read_text(encoding="utf-8"))
    processor = _processor(tf, ckpt, req["min_pixels"], req["max_pixels"])
    model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    all_images = [image_mod.open(p).convert("RGB") for p in req["images"]]
    results: dict[str, Any] = {}
    for state in range(1, 5):
        messages, generation_prompt, n_images = _messages(req, state)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        if not generation_prompt and text.endswith("<|im_end|>\n"):  # upstream continues the open turn
            text = text[: -len("<|im_end|>\n")]
        inputs = processor(text=[text], images=all_images[:n_images], return_tensors="pt")
        ids = inputs["input_ids"]
        types = (ids == model.config.image_token_id).long()
        with torch.no_grad():
            kwargs = {
                "input_ids": ids,
                "mm_token_type_ids": types,
                "image_grid_thw": inputs["image_grid_thw"],
                "attention_mask": inputs["attention_mask"],
            }
            accepted = _import("inspect").signature(model.model.get_rope_index).parameters
            rope = model.model.get_rope_index(**{k: v for k, v in kwargs.items() if k in accepted})  # 4.57 and 5.x
            positions = rope[0] if isinstance(rope, tuple) else rope
            out = model(
                input_ids=ids,
                attention_mask=inputs["attention_mask"],
                mm_token_type_ids=types,
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
            )
        results[f"input_ids_{state}"] = ids[0].numpy()
        results[f"positions_{state}"] = positions[:, 0, :].numpy()
        results[f"logits_{state}"] = out.logits[0, -1].float().numpy()
        results[f"text_{state}"] = np.array(text)
    np.savez(out_path, **results)
    print(json.dumps({"saved": str(out_path), "n_tokens": int(results["input_ids_4"].shape[0])}))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "build":
        build(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 4 and argv[0] == "conversation":
        conversation(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
