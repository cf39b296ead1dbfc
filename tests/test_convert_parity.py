"""The conversion is correct: llama.cpp on the converted GGUF computes what transformers computes.

A tiny random-weight Qwen2.5-VL checkpoint (built by transformers), converted by the real
`thyme models convert` command (F32 text model and projector, so only arithmetic differs),
loaded by the real llama.cpp with an F32 KV cache. Compared with the transformers forward pass
on the same token ids and the same image:

- text logits at every position,
- the projector's merged image embeddings for one 112x84 image (no resize on either side),
- the last logits of a text + image + text sequence (M-RoPE positions through the image),
- the tokenizer's ids for a string (vocab, merges and pre-tokenizer survived the conversion).

Measured on a 2-core CPU (transformers 5.24, torch 2.13, llama-cpp-python 0.3.36): text logits
max |diff| 6.7e-4 (logits up to ~6.5), argmax 45/45, image embeddings 5.2e-5, image+text last
logits 1.3e-3. The tolerances below are ~5-20x those.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import RunThyme
from tests.hub_fixtures import (  # noqa: F401  (fixtures)
    converter_fixture,
    converter_python_fixture,
    tiny_checkpoint_fixture,
)

pytestmark = pytest.mark.slow

TEXT_LOGITS_TOL = 5e-3
IMAGE_EMBD_TOL = 1e-3
MM_LOGITS_TOL = 1e-2
PROMPT = (
    "<|im_start|>user\nHello world! What is written on the sign?<|im_end|>\n<|im_start|>assistant\nThe answer is 42."
)
MM_PROMPT = "<|im_start|>user\n{marker}What is written on the sign in this picture?<|im_end|>\n<|im_start|>assistant\n"
TOKENIZE = "Read the serial number: SN-2048-XK7. Total amount: $13.75, paid 2024-05-01."


def _write_image(path: Path) -> Path:
    """112x84 RGB (multiples of 28: neither transformers nor mtmd resizes it), with structure and noise."""
    from PIL import Image

    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:84, 0:112]
    base = np.stack([xs * 2.2, ys * 3.0, (xs + ys) * 1.3], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _llama_outputs(model: Path, mmproj: Path, image: Path) -> dict[str, Any]:
    """Text logits, image embeddings, image+text last logits and token ids, from llama.cpp."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    from PIL import Image

    llm = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=512,
        logits_all=True,
        type_k=0,
        type_v=0,  # f32 KV cache
        n_threads=2,
        n_gpu_layers=0,
        verbose=False,
    )
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 2, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
    assert ctx, "the projector did not load"
    chunks = mtmd.mtmd_input_chunks_init()
    rgb = Image.open(image).convert("RGB")
    raw = rgb.tobytes()
    bitmap = mtmd.mtmd_bitmap_init(rgb.width, rgb.height, (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw))
    try:
        ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
        llm.eval(ids)
        text_logits = np.array(llm.scores[: len(ids)], dtype=np.float32)

        text = MM_PROMPT.format(marker=mtmd.mtmd_default_marker().decode()).encode()
        inp = mtmd.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        before: list[int] = []
        after: list[int] = []
        embd = None
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                toks = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                (before if embd is None else after).extend(toks[j] for j in range(n.value))
            else:
                assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
                n_img = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                flat = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n_img * llm.n_embd(),))
                embd = flat.reshape(n_img, llm.n_embd()).copy()
        llm.reset()
        llm._ctx.kv_cache_clear()
        n_past = llama_cpp.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(ctx, llm._ctx.ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) == 0
        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()
        tokenized = llm.tokenize(TOKENIZE.encode(), add_bos=False, special=False)
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_free(ctx)
        llm.close()
    return {
        "text_ids": ids,
        "text_logits": text_logits,
        "image_embd": embd,
        "mm_before": before,
        "mm_after": after,
        "mm_last_logits": last,
        "tokenized": tokenized,
    }


def _reference(python: Path, checkpoint: Path, request: dict[str, Any], tmp_path: Path) -> Any:
    """The transformers forward pass, run in the converter environment."""
    from thyme_cli.models.convert import tiny as convert_tiny

    req_path, out_path = tmp_path / "request.json", tmp_path / "reference.npz"
    req_path.write_text(json.dumps(request))
    result = subprocess.run(
        [str(python), "-I", convert_tiny.__file__, "reference", str(checkpoint), str(req_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out_path)


def test_converted_tiny_qwen25vl_matches_transformers(
    converter: Path, tiny_checkpoint: Path, run_thyme: RunThyme, tmp_path: Path
) -> None:
    result = run_thyme(
        "models",
        "convert",
        str(tiny_checkpoint),
        "--name",
        "tiny-f32",
        "--quant",
        "F32",
        "--mmproj-type",
        "f32",
        "--protocol",
        "thyme",
    )
    assert result.returncode == 0, result.stderr
    model, mmproj = (Path(p) for p in run_thyme("models", "path", "tiny-f32").stdout.splitlines())
    assert model.name == "tiny-f32-F32.gguf" and mmproj.name == "mmproj-tiny-f32-f32.gguf"

    image = _write_image(tmp_path / "sign.png")
    ours = _llama_outputs(model, mmproj, image)
    ref = _reference(
        converter,
        tiny_checkpoint,
        {
            "text_ids": ours["text_ids"],
            "mm_before": ours["mm_before"],
            "mm_after": ours["mm_after"],
            "image": str(image),
            "tokenize": TOKENIZE,
        },
        tmp_path,
    )

    # The model is far from flat, so these tolerances are meaningful.
    assert np.abs(ref["text_logits"]).max() > 2.0

    text_diff = float(np.abs(ours["text_logits"] - ref["text_logits"]).max())
    agree = ours["text_logits"].argmax(-1) == ref["text_logits"].argmax(-1)
    top2 = np.sort(ref["text_logits"], axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * TEXT_LOGITS_TOL  # positions where the winner is not a near-tie
    image_diff = float(np.abs(ours["image_embd"] - ref["image_embd"]).max())
    mm_diff = float(np.abs(ours["mm_last_logits"] - ref["mm_last_logits"]).max())
    print(
        f"text logits max|diff| {text_diff:.2e}, argmax {int(agree.sum())}/{agree.size}; "
        f"image embd max|diff| {image_diff:.2e} over {ref['image_embd'].shape}; mm last logits {mm_diff:.2e}"
    )

    assert ours["text_logits"].shape == ref["text_logits"].shape
    assert text_diff < TEXT_LOGITS_TOL
    assert agree[clear].all() and clear.sum() >= 0.9 * agree.size
    assert ours["image_embd"].shape == ref["image_embd"].shape == (12, 64)  # 112x84 -> 4x3 merged tokens
    assert image_diff < IMAGE_EMBD_TOL
    assert mm_diff < MM_LOGITS_TOL
    assert ours["mm_last_logits"].argmax() == ref["mm_last_logits"].argmax()
    assert list(ours["tokenized"]) == [int(t) for t in ref["tokenized"]]
