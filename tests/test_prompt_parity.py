"""Prompt-token, M-RoPE position and multi-turn logit parity with transformers, on the REAL vocabulary.

A tiny random-weight Qwen2.5-VL whose tokenizer and processor files are the real Qwen2.5-VL ones
(../shared/data/qwen2.5-vl) is built by transformers (tests/parity_reference.py, in the converter
environment), converted by the real `thyme models convert` (F32), and loaded by thyme's own
llama.cpp engine. A Thyme conversation (system prompt; user turn with an image and the question;
an assistant turn with code; a `<sandbox_output>` holding a new image inside the assistant turn;
the final answer) is fed through the engine exactly as the agent loop feeds it, and compared with
what transformers builds for the same conversation in upstream's format:

- the token sequence thyme evaluated (each image expanded to its pad tokens) == the processor's
  input_ids (image pad counts included: smart_resize with the same min/max pixels);
- the M-RoPE positions llama.cpp used == `get_rope_index`;
- the next-token logits after every turn == the transformers forward pass, within LOGITS_TOL.

The same for the generic protocol, rendered with the GGUF's own chat template (the observation as
a user turn).

Skips without the converter environment (`thyme models convert --setup`, as .ci/run does).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import RunThyme
from tests.hub_fixtures import converter_fixture, converter_python_fixture  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# The real tokenizer/processor files (not in the repository: ~4 MB); THYME_QWEN_DATA moves them.
QWEN_DATA = Path(os.environ.get("THYME_QWEN_DATA", REPO.parent / "shared" / "data" / "qwen2.5-vl"))
REFERENCE = Path(__file__).resolve().parent / "parity_reference.py"
# F32 weights, an F32 KV cache and no flash attention on both sides: only summation order
# differs. Measured on a 2-core CPU: max |diff| 1.4e-3 to 1.8e-3 per turn (logits up to ~8), so
# 1e-2 leaves ~5x headroom and is far below what one wrong token or position causes (O(1): a
# token off by one gave 10). With llama.cpp's CPU flash attention the diff after the second
# image grows to ~0.09 (its reduced-precision accumulation), hence flash_attn=False here.
LOGITS_TOL = 1e-2
QUESTION = "What is the plate number of the blue car?\n(A) S QT 911\n(B) S QT 917"
SEGMENT_1 = (
    "<think>The plate is small, so I will crop and zoom in on it.\n<code>\n```python\n"
    "from PIL import Image\nimage = Image.open(image_path)\nx1, y1, x2, y2 = 40, 30, 120, 80\n"
    "crop = image.crop((x1, y1, x2, y2)).resize((160, 100))\n"
    'processed_path = "/mnt/data/temp_processed_images/plate.png"\ncrop.save(processed_path)\n'
    "print(processed_path)\n```\n</code>"
)
SEGMENT_2 = "\nThe zoomed plate reads S QT 911, which is option A.</think>\n<answer>A</answer>"


def make_images(tmp: Path) -> list[Path]:
    """Two photos-like pictures (gradients with texture and noise), neither a multiple of 28 px:
    both sides resize them with smart_resize."""
    from PIL import Image

    rng = np.random.default_rng(3)
    out = []
    for name, (w, h) in (("car.png", (300, 200)), ("plate.png", (160, 100))):
        ys, xs = np.mgrid[0:h, 0:w]
        base = np.stack([xs * 200 / w, ys * 200 / h, 128 + 60 * np.sin(xs / 9.0) * np.cos(ys / 7.0)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp / name)
        out.append(tmp / name)
    return out


@pytest.fixture(scope="module")
def real_vocab_model(converter_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real-vocabulary checkpoint, and its conversion by `thyme models convert`."""
    if not (QWEN_DATA / "vocab.json").is_file():
        pytest.skip(f"the real Qwen2.5-VL tokenizer files are not at {QWEN_DATA}")
    base = tmp_path_factory.mktemp("real-vocab")
    ckpt = base / "ckpt"
    built = subprocess.run(
        [str(converter_python), "-I", str(REFERENCE), "build", str(ckpt), str(QWEN_DATA)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return {"ckpt": ckpt, "base": base}


def _convert(run_thyme: RunThyme, ckpt: Path) -> tuple[Path, Path, str]:
    result = run_thyme(
        "models",
        "convert",
        str(ckpt),
        "--name",
        "realvocab",
        "--quant",
        "F32",
        "--mmproj-type",
        "f32",
        "--protocol",
        "thyme",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model, mmproj = (Path(p) for p in run_thyme("models", "path", "realvocab").stdout.splitlines())
    return model, mmproj, result.stdout + result.stderr


def thyme_side(model: Path, mmproj: Path, images: list[Path], protocol: str) -> dict[str, Any]:
    """Feed the conversation through thyme's engine as the agent loop does; record tokens,
    positions (as llama.cpp was given and returned them) and logits after every turn."""
    from thyme_cli.engine.images import PreparedImage
    from thyme_cli.engine.llama.engine import LlamaEngine
    from thyme_cli.engine.settings import EngineOptions
    from thyme_cli.question import prompts as proto

    options = EngineOptions(
        n_ctx=4096,
        kv_cache_type="f32",
        n_threads=2,
        flash_attn=False,
        mmproj_flash_attn=False,
        image_max_tokens=3072,
        chat_format="chatml" if protocol == "thyme" else "template",
        reserve_tokens=0,
    )
    engine = LlamaEngine.load(model, mmproj, options=options)
    positions: list[np.ndarray] = []
    native = engine.native
    plain_tokens, plain_image = native.decode_tokens, native.decode_image

    def decode_tokens(tokens: Any, pos0: int, on_batch: Any = None, seq: int = 0) -> None:
        n = len(tokens)
        positions.append(np.tile(np.arange(pos0, pos0 + n), (3, 1)))
        plain_tokens(tokens, pos0, on_batch, seq)

    def decode_image(chunk: Any, embd: Any, pos: int, seq: int = 0) -> int:
        nx, ny = chunk.grid  # mtmd's own grid for this image; llama.cpp's M-RoPE rule: t=pos, h=pos+y, w=pos+x
        ys, xs = np.mgrid[0:ny, 0:nx]
        positions.append(np.stack([np.full(nx * ny, pos), pos + ys.ravel(), pos + xs.ravel()]))
        new = plain_image(chunk, embd, pos, seq)
        assert new == pos + max(nx, ny)  # what llama.cpp returned as the next position
        return new

    plain_rm = native.seq_rm

    def seq_rm(p0: int, seq: int = 0) -> None:  # llama.cpp drops the cells at positions >= p0 (their t component)
        positions[:] = [block[:, block[0] < p0] for block in positions]
        plain_rm(p0, seq)

    native.decode_tokens, native.decode_image = decode_tokens, decode_image  # type: ignore[method-assign]
    native.seq_rm = seq_rm  # type: ignore[method-assign]
    try:
        conv = engine.open()
        pad = native.tokenize("<|image_pad|>")
        assert len(pad) == 1
        states: list[dict[str, Any]] = []

        def mark() -> None:
            """The state after a turn: tokens (images as their pads), positions, next-token logits."""
            ids: list[int] = []
            for item in conv.token_stream():
                if isinstance(item, PreparedImage):
                    ids += pad * ((item.width // 28) * (item.height // 28))
                else:
                    ids.append(int(item))
            states.append({"ids": ids, "positions": np.concatenate(positions, axis=1), "logits": conv.logits().copy()})

        conv.feed_system(proto.system_prompt(protocol))
        from PIL import Image

        with Image.open(images[0]) as im:
            size = im.size
        user = proto.user_prompt(QUESTION, "/mnt/data/input/car.png", *size)
        conv.feed_user(user, [images[0]])
        mark()
        conv.feed_assistant(SEGMENT_1)
        mark()
        observation = proto.observation(n_images=1, stdout="", error=None)
        if protocol == "thyme":
            conv.feed_assistant(observation, [images[1]])
        else:
            conv.feed_user(observation, [images[1]])
        mark()
        conv.feed_assistant(SEGMENT_2)
        mark()
        sizing = engine.image_sizing
        conv.close()
    finally:
        engine.close()
    return {
        "states": states,
        "user_text": user.replace(proto.IMAGE_MARKER, "", 1),
        "system": proto.system_prompt(protocol),
        "min_pixels": sizing.min_pixels,
        "max_pixels": sizing.max_pixels,
    }


def reference_request(protocol: str, ours: dict[str, Any], images: list[Path]) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "system": ours["system"],
        "user": ours["user_text"],
        "assistant": [SEGMENT_1, SEGMENT_2],
        "images": [str(p) for p in images],
        "min_pixels": ours["min_pixels"],
        "max_pixels": ours["max_pixels"],
    }


def reference(python: Path, ckpt: Path, request: dict[str, Any], tmp: Path) -> Any:
    req, out = tmp / "request.json", tmp / "reference.npz"
    req.write_text(json.dumps(request))
    result = subprocess.run(
        [str(python), "-I", str(REFERENCE), "conversation", str(ckpt), str(req), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def parity_figures(ours: dict[str, Any], ref: Any) -> dict[str, Any]:
    """Token, position and next-token logit agreement between thyme and transformers after every
    turn (each state compared with transformers' own build of the conversation up to there)."""
    tokens_equal, positions_equal, diffs, argmax, first_diff = [], [], [], [], None
    scale = 0.0
    for k, state in enumerate(ours["states"], 1):
        want = [int(t) for t in ref[f"input_ids_{k}"]]
        same = state["ids"] == want
        tokens_equal.append(same)
        if not same and first_diff is None:
            i = next(i for i, (a, b) in enumerate(zip([*state["ids"], -1], [*want, -1], strict=False)) if a != b)
            first_diff = {"state": k, "at": i, "thyme": state["ids"][i : i + 8], "transformers": want[i : i + 8]}
        positions_equal.append(same and np.array_equal(state["positions"], ref[f"positions_{k}"]))
        diffs.append(float(np.abs(state["logits"] - ref[f"logits_{k}"]).max()))
        argmax.append(bool(state["logits"].argmax() == ref[f"logits_{k}"].argmax()))
        scale = max(scale, float(np.abs(ref[f"logits_{k}"]).max()))
    return {
        "tokens_equal": all(tokens_equal),
        "n_tokens": [len(s["ids"]) for s in ours["states"]],
        "first_difference": first_diff,
        "positions_equal": all(positions_equal),
        "logits_max_abs_diff_per_turn": diffs,
        "argmax_equal": argmax,
        "logits_scale": scale,
    }


def test_real_tokenizer_converts_without_fallback(
    real_vocab_model: dict[str, Path], converter: Path, run_thyme: RunThyme
) -> None:
    from gguf import GGUFReader

    model, _mmproj, log = _convert(run_thyme, real_vocab_model["ckpt"])
    assert "not in the converter's table" not in log, log
    reader = GGUFReader(str(model))

    def field(name: str) -> Any:
        f = reader.fields[name]
        return f.contents()

    assert field("tokenizer.ggml.pre") == "qwen2"
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    for tok, tid in (
        ("<|endoftext|>", 151643),
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
        ("<|vision_start|>", 151652),
        ("<|vision_end|>", 151653),
        ("<|image_pad|>", 151655),
    ):
        assert tokens[tid] == tok and types[tid] == 3, tok  # 3: CONTROL
    assert field("tokenizer.ggml.eos_token_id") == 151645
    template = field("tokenizer.chat_template")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in template and "<|im_start|>" in template


@pytest.mark.parametrize("protocol", ["thyme", "generic"])
def test_conversation_tokens_positions_and_logits_match_transformers(
    protocol: str, real_vocab_model: dict[str, Path], converter: Path, run_thyme: RunThyme, tmp_path: Path
) -> None:
    model, mmproj, _log = _convert(run_thyme, real_vocab_model["ckpt"])
    images = make_images(tmp_path)
    ours = thyme_side(model, mmproj, images, protocol)
    request = reference_request(protocol, ours, images)
    ref = reference(converter, real_vocab_model["ckpt"], request, tmp_path)
    fig = parity_figures(ours, ref)
    print(f"{protocol}: {json.dumps(fig)}")
    assert fig["tokens_equal"], fig
    assert fig["positions_equal"], "M-RoPE positions differ"
    assert fig["logits_scale"] > 2.0  # not a flat model: the tolerance means something
    assert all(fig["argmax_equal"]) and max(fig["logits_max_abs_diff_per_turn"]) < LOGITS_TOL, fig
