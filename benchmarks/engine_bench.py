"""Live-context engine vs llama-cpp-python's stock chat path, on a 5-turn, 4-image conversation.

Usage: python benchmarks/engine_bench.py [--size tiny|small] [--gen-tokens N] [--threads N]

Both sides run the same Thyme-shaped conversation on the same random-weight GGUF pair (written
at start-up): a ~400-token system prompt, a ~1000 px first image with a question, then four
more turns that each add a sandbox observation (a crop image for turns 2-4, text for turn 5)
after a reply of ``--gen-tokens`` tokens. Observations go in as user turns on both sides so
the prompts are the same (the stock handler only takes images from user messages).
Decoding is greedy with end-of-turn tokens masked, so every turn generates exactly the same
number of tokens on both sides.

- engine: ``LlamaEngine`` -- one live context, only new tokens evaluated, each image encoded once.
- stock: ``Llama.create_chat_completion`` with ``Qwen25VLChatHandler`` and the full history
  each turn, the way a naive agent uses llama-cpp-python (it clears the KV cache and
  re-encodes every image on every call).

Work is counted from the C calls themselves (llama_decode batches and libmtmd image chunks, by
wrapping the bindings), not from either side's own bookkeeping. The engine's Python overhead is
a turn's wall time minus the time spent inside llama.cpp / libmtmd calls (timed around each
call); reading and resizing the image files with Pillow counts as overhead, and is also shown
apart. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thyme_cli.devtools.tiny_gguf import write_qwen25vl_projector, write_text_model
from thyme_cli.engine.base import IMAGE_MARKER

SYSTEM = (
    "You are a helpful assistant. Solve the user's problem step by step. You may write Python code to "
    "crop, rotate, resize or enhance the image, or to calculate. The code runs in an external sandbox; "
    "its output comes back between <sandbox_output> and </sandbox_output>. Wrap every snippet as "
    "<code>```python ... ```</code> and print the path of any image you save (processed_path). "
    "Give the final answer between <answer> and </answer>."
)
QUESTION = (
    "What is written on the small sign to the left of the door? Read it exactly.\n\n"
    '### User Image Path:** "/data/photo.jpg"\n### User Image Size:** "1036x756"\n\n'
    "### **Output Format (strict adherence required):**\n<think>Your reasoning, including any code.</think>\n"
    "<answer>Your final answer.</answer>"
)
# (width, height): multiples of 28, so both sides give the model the same token grid.
FIRST_IMAGE = (1036, 756)
CROPS = [(392, 308), (308, 420), (504, 392)]
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {"text": {}, "vision": {}},
    "small": {
        "text": {"n_embd": 512, "n_layer": 8, "n_head": 8, "n_head_kv": 4, "n_ff": 1536},
        "vision": {"proj_dim": 512, "v_embd": 128, "v_ff": 256, "v_layers": 4, "v_heads": 4},
    },
}


@dataclass
class Turn:
    tokens: int = 0
    images: int = 0
    wall_s: float = 0.0
    native_s: float = 0.0
    image_load_s: float = 0.0
    generated: int = 0


@dataclass
class Spy:
    """Counts the work that reaches llama.cpp, whoever calls it."""

    tokens: int = 0
    image_encodes: int = 0
    restore: list[Callable[[], None]] = field(default_factory=list)

    def install(self) -> None:
        import llama_cpp
        import llama_cpp.llama_cpp as low
        import llama_cpp.mtmd_cpp as mtmd

        def wrap(module: Any, name: str, count: Callable[..., None]) -> None:
            original = getattr(module, name)

            def spy(*args: Any) -> Any:
                count(*args)
                return original(*args)

            setattr(module, name, spy)
            self.restore.append(lambda: setattr(module, name, original))

        def text(_ctx: Any, batch: Any) -> None:
            self.tokens += batch.n_tokens if batch.token else 0

        def encode(*_args: Any) -> None:
            self.image_encodes += 1

        def single(_m: Any, _l: Any, chunk: Any, *_rest: Any) -> None:
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                self.image_encodes += 1
                self.tokens += mtmd.mtmd_input_chunk_get_n_tokens(chunk)

        def image_decode(_m: Any, _l: Any, chunk: Any, *_rest: Any) -> None:
            self.tokens += mtmd.mtmd_input_chunk_get_n_tokens(chunk)

        # Text batches: the stock path goes through llama_cpp.llama_cpp, the engine through the
        # package-level re-export; both names are wrapped. Image chunks the stock path evaluates in
        # C (eval_chunk_single); the engine encodes and decodes them in two calls.
        wrap(low, "llama_decode", text)
        if llama_cpp.llama_decode is not low.llama_decode:
            wrap(llama_cpp, "llama_decode", text)
        wrap(mtmd, "mtmd_helper_eval_chunk_single", single)
        wrap(mtmd, "mtmd_encode_chunk", encode)
        wrap(mtmd, "mtmd_helper_decode_image_chunk", image_decode)

    def uninstall(self) -> None:
        for undo in reversed(self.restore):
            undo()
        self.restore.clear()


def write_images(out: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([FIRST_IMAGE, *CROPS]):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.int16)
        noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        if i == 0:  # the user's photo: a JPEG, as photos are
            path = out / "image0.jpg"
            Image.fromarray(noisy).save(path, "JPEG", quality=90)
        else:  # a crop: a compressed PNG, as the sandbox's host side stores it
            path = out / f"image{i}.png"
            Image.fromarray(noisy).save(path, "PNG", compress_level=6)
        paths.append(path)
    return paths


def observations(images: list[Path]) -> list[tuple[str, list[Path]]]:
    """What each of turns 2..5 adds: a sandbox result with a crop, then a text-only one."""
    obs: list[tuple[str, list[Path]]] = [
        (f"<sandbox_output>{IMAGE_MARKER}</sandbox_output>\nThe crop is saved at /tmp/out/crop{i}.png.", [img])
        for i, img in enumerate(images[1:], 1)
    ]
    obs.append(("<sandbox_output>contrast raised; text reads 'OPEN 9-5'</sandbox_output>", []))
    return obs


def eog_bias(token_ids: list[int]) -> dict[int, float]:
    return dict.fromkeys(token_ids, -1000.0)


def run_engine(model: Path, mmproj: Path, images: list[Path], n_gen: int, threads: int, spy: Spy) -> list[Turn]:
    from thyme_cli.engine.llama.engine import EngineOptions, LlamaEngine, SamplingOptions

    # The stock handler warms its vision encoder up when it loads; so does the engine here.
    options = EngineOptions(n_ctx=8192, n_threads=threads, flash_attn=False, reserve_tokens=0, mmproj_warmup=True)
    engine = LlamaEngine.load(model, mmproj, options=options)
    bias = eog_bias([t for t in range(engine.native.n_vocab) if engine.native.is_eog(t)])
    conv = engine.open(SamplingOptions(logit_bias=bias))
    conv.feed_system(SYSTEM)
    turns: list[Turn] = []
    feeds = [(f"{IMAGE_MARKER}\n{QUESTION}", images[:1]), *observations(images)]
    for text, imgs in feeds:
        before_tokens, before_images = spy.tokens, spy.image_encodes
        native0, load0 = engine.native.native_s, conv.counters.image_load_s
        t0 = time.perf_counter()
        conv.feed_user(text, imgs)
        gen = conv.generate(max_tokens=n_gen)
        wall = time.perf_counter() - t0
        turns.append(
            Turn(
                tokens=spy.tokens - before_tokens,
                images=spy.image_encodes - before_images,
                wall_s=wall,
                native_s=engine.native.native_s - native0,
                image_load_s=conv.counters.image_load_s - load0,
                generated=gen.n_tokens,
            )
        )
    engine.close()
    return turns


def run_stock(model: Path, mmproj: Path, images: list[Path], n_gen: int, threads: int, spy: Spy) -> list[Turn]:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler

    handler = Qwen25VLChatHandler(clip_model_path=str(mmproj), verbose=False)
    llm = Llama(
        model_path=str(model),
        chat_handler=handler,
        n_ctx=8192,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=False,
        verbose=False,
    )
    handler._init_mtmd_context(llm)  # load the projector before timing, as the engine does at load
    eog = [t for t in range(llm.n_vocab()) if _is_eog(llm, t)]
    bias = dict.fromkeys(eog, -1000.0)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    turns: list[Turn] = []
    feeds = [(f"{IMAGE_MARKER}\n{QUESTION}", images[:1]), *observations(images)]
    for text, imgs in feeds:
        content: list[dict[str, Any]] = []
        pieces = text.split(IMAGE_MARKER)
        for i, piece in enumerate(pieces):
            if i:
                content.append({"type": "image_url", "image_url": {"url": imgs[i - 1].resolve().as_uri()}})
            if piece:
                content.append({"type": "text", "text": piece})
        messages.append({"role": "user", "content": content})
        before_tokens, before_images = spy.tokens, spy.image_encodes
        t0 = time.perf_counter()
        history: Any = messages
        out = llm.create_chat_completion(messages=history, max_tokens=n_gen, temperature=0.0, logit_bias=bias)
        wall = time.perf_counter() - t0
        reply = out["choices"][0]["message"]["content"] or ""  # type: ignore[index]
        messages.append({"role": "assistant", "content": reply})
        turns.append(Turn(tokens=spy.tokens - before_tokens, images=spy.image_encodes - before_images, wall_s=wall))
    llm.close()
    return turns


def _is_eog(llm: Any, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def table(engine: list[Turn], stock: list[Turn]) -> str:
    rows = [
        "turn | engine tokens | engine encodes | engine s | engine py% | stock tokens | stock encodes | stock s",
        "---- | ------------- | -------------- | -------- | ---------- | ------------ | ------------- | -------",
    ]
    for i, (e, s) in enumerate(zip(engine, stock, strict=True), 1):
        py = 100 * (e.wall_s - e.native_s) / e.wall_s if e.wall_s else 0.0
        rows.append(
            f"{i:4d} | {e.tokens:13d} | {e.images:14d} | {e.wall_s:8.3f} | {py:9.1f}% | "
            f"{s.tokens:12d} | {s.images:13d} | {s.wall_s:7.3f}"
        )
    te, ts = sum(t.tokens for t in engine), sum(t.tokens for t in stock)
    rows.append(
        f" all | {te:13d} | {sum(t.images for t in engine):14d} | {sum(t.wall_s for t in engine):8.3f} | "
        f"{'':10s} | {ts:12d} | {sum(t.images for t in stock):13d} | {sum(t.wall_s for t in stock):7.3f}"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--gen-tokens", type=int, default=150)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="thyme-bench-") as tmp:
        out = Path(tmp)
        model = write_text_model(out / "model.gguf", **SIZES[args.size]["text"])
        mmproj = write_qwen25vl_projector(out / "mmproj.gguf", **SIZES[args.size]["vision"])
        images = write_images(out)
        spy = Spy()
        spy.install()
        try:
            engine = run_engine(model, mmproj, images, args.gen_tokens, args.threads, spy)
            stock = run_stock(model, mmproj, images, args.gen_tokens, args.threads, spy)
        finally:
            spy.uninstall()
    print(
        f"model: {args.size} random-weight qwen2vl + qwen2.5vl_merger; {args.gen_tokens} generated tokens "
        f"per turn; {args.threads} threads; tokens = text + image tokens evaluated (generated ones included)"
    )
    print(table(engine, stock))
    # Prefill = tokens evaluated minus the generated ones (the same on both sides).
    gen = args.gen_tokens
    prefill_engine = sum(t.tokens for t in engine) - gen * len(engine)
    prefill_stock = sum(t.tokens for t in stock) - gen * len(stock)
    wall = sum(t.wall_s for t in engine)
    python = wall - sum(t.native_s for t in engine)
    image_io = sum(t.image_load_s for t in engine)
    result = {
        "model_size": args.size,
        "turns": len(engine),
        "prefill_tokens_engine": prefill_engine,
        "prefill_tokens_stock": prefill_stock,
        "prefill_ratio_stock_over_engine": round(prefill_stock / prefill_engine, 2),
        "image_encodes_engine": sum(t.images for t in engine),
        "image_encodes_stock": sum(t.images for t in stock),
        "wall_s_engine": round(wall, 3),
        "wall_s_stock": round(sum(t.wall_s for t in stock), 3),
        # Wall time outside llama.cpp / libmtmd calls, reading and resizing image files included
        # (the first image is decoded while the system prompt evaluates, so part of that overlaps).
        "engine_overhead_share": round(python / wall, 4),
        "engine_image_file_s": round(image_io, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
