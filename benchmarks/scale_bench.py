"""What one Thyme question costs on a real-shape 3B / 7B model, against this machine's physical limit.

Usage: python benchmarks/scale_bench.py --shape 3b|7b [--threads 1,2] [--skip-stock] [--quick]

The model pair has the exact shapes of Qwen2.5-VL-3B / -7B (Q4_K_M language model, f16 32-block
vision tower, real tokenizer) with random weights; timing does not depend on the weight values.
It is written once into ~/.cache/thyme-bench/ by thyme_cli.devtools.real_shape_gguf.

The question: a 1600x1200 photo, Thyme's system and user prompts, two code steps that each
return a crop (run in the real sandbox), then an answer. The replies are scripted: each is
decoded one token at a time exactly as generation does (logits computed, the sampler run), with
the script's token in place of the sampled one, so the work equals a real run.

Side by side, each in its own process (so peak RSS is per run):
- thyme: ``ask_one`` with thyme's defaults (the thyme-7b registry entry's context and image
  budget, default threads) -- the real agent loop, engine and sandbox;
- limit: the same token/image stream with nothing but llama.cpp: every image encoded once,
  every fed token evaluated once in full batches, every reply token decoded once, for each
  thread setting in --threads; the limit takes the best setting per part;
- stock: llama-cpp-python's ``create_chat_completion`` with ``Qwen25VLChatHandler`` and the full
  history each turn (observations as user turns, as that handler only takes user images);
- load: model + projector load and first evaluation, from a cold page cache and a warm one.

Memory bandwidth is measured here (threads reading a large array) so decode speed can be set
against the bound "bandwidth / bytes read per token". Figures taken on a loaded machine are
not final. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import write_photo  # noqa: E402  (this folder, as the script's)

from thyme_cli.devtools.real_shape_gguf import SHAPES, ensure_pair, weight_bytes  # noqa: E402
from thyme_cli.engine.base import IMAGE_MARKER  # noqa: E402

PHOTO = (1600, 1200)
QUICK_PHOTO = (560, 420)
QUESTION = "What is written on the small sign to the left of the door? Read it exactly."
THINK_1 = (
    "<think>The question asks about the text on a small sign to the left of the door. The photo is "
    "large and the sign occupies only a small part of it, so reading it directly is unreliable: the "
    "letters are only a few pixels tall at this scale. The door is roughly in the middle of the right "
    "half of the image, and the sign should be just left of it, around the middle height. I will crop "
    "that region generously so the sign is certainly inside, then look at the crop before zooming "
    "further. Cropping keeps the original resolution, which helps with small text.\n"
)
CODE_1 = (
    "<code>\n```python\nfrom PIL import Image\nimg = Image.open(image_path)\nw, h = img.size\n"
    "box = (int(w * 0.50), int(h * 0.42), int(w * 0.875), int(h * 0.79))\ncrop = img.crop(box)\n"
    "processed_path = '/mnt/data/temp_processed_images/sign_region.png'\ncrop.save(processed_path)\n"
    "print(processed_path)\n```\n</code>"
)
THINK_2 = (
    "The crop shows the door on the right and a small rectangular sign on the wall to its left. The "
    "sign is still small and the letters are blurry. I will crop tighter around the sign and enlarge "
    "it two times with a high-quality filter so the characters become readable.\n"
)
CODE_2 = (
    "<code>\n```python\nsign_box = (int(w * 0.62), int(h * 0.54), int(w * 0.81), int(h * 0.73))\n"
    "sign = img.crop(sign_box)\nsign = sign.resize((sign.width * 2, sign.height * 2), Image.LANCZOS)\n"
    "processed_path = '/mnt/data/temp_processed_images/sign_zoom.png'\nsign.save(processed_path)\n"
    "print(processed_path)\n```\n</code>"
)
ANSWER = (
    "Enlarged, the sign is clear: two lines of dark capital letters on a light background. The first "
    "line says OPEN and the second gives the hours, 9 to 5. There is nothing else on the sign.</think>\n"
    "<answer>OPEN 9-5</answer>"
)
REPLIES = [THINK_1 + CODE_1, THINK_2 + CODE_2, ANSWER]
QUICK_REPLIES = ["<think>Crop it.\n" + CODE_1, "Zoom.\n" + CODE_2, "</think>\n<answer>OPEN 9-5</answer>"]


@dataclass
class Parts:
    """Seconds and counts of one run, by part."""

    image_encode_s: float = 0.0
    images_encoded: int = 0
    image_tokens: int = 0
    prefill_s: float = 0.0
    prefill_tokens: int = 0
    decode_s: float = 0.0
    decode_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drop_page_cache(paths: list[Path]) -> bool:
    """Evict the files from the page cache (clean pages; no privileges needed)."""
    ok = True
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def memory_bandwidth_gbs(threads: int, mb_per_thread: int = 512) -> float:
    """Read bandwidth: ``threads`` threads each summing its own array (numpy releases the GIL)."""
    arrays = [np.ones(mb_per_thread * 2**20 // 8) for _ in range(threads)]
    best = 0.0
    for _ in range(3):
        barrier = threading.Barrier(threads + 1)

        def read(a: np.ndarray, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            a.sum()

        workers = [threading.Thread(target=read, args=(a,)) for a in arrays]
        for t in workers:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in workers:
            t.join()
        best = max(best, threads * mb_per_thread * 2**20 / (time.perf_counter() - t0) / 1e9)
    return best


SETTING_FORM = "THREADS[:KV[:FLASH[:PROJECTOR_FLASH]]] (FLASH: on|off|auto)"


def parse_setting(text: str) -> tuple[int, str | None, str | None, str | None]:
    """A limit setting: THREADS[:KV_CACHE_TYPE[:FLASH[:PROJECTOR_FLASH]]], e.g. "2", "2:q8_0",
    "2:f16:off" (the language model's flash attention off), "2:f16:off:off" (the projector's too)."""
    parts = text.split(":")
    bad = f"bad --threads setting {text!r}: expected {SETTING_FORM}"
    try:
        threads = int(parts[0])
    except ValueError:
        raise SystemExit(bad) from None
    kv, flash, mmproj_flash = ((parts[i] if len(parts) > i and parts[i] else None) for i in (1, 2, 3))
    if (
        threads < 1
        or len(parts) > 4
        or (kv and kv not in ("f32", "f16", "bf16", "q8_0", "q4_0"))
        or any(f and f not in ("on", "off", "auto") for f in (flash, mmproj_flash))
    ):
        raise SystemExit(bad)
    return threads, kv, flash, mmproj_flash


# --- phases (each runs in its own process) ------------------------------------------------------


def thyme_defaults() -> Any:
    """EngineOptions exactly as `thyme ask -m thyme-7b` builds them (registry entry + defaults)."""
    from thyme_cli.engine.settings import EngineOptions
    from thyme_cli.models.registry import load_registry

    return EngineOptions.from_spec(load_registry().get("thyme-7b"))


def phase_thyme(args: argparse.Namespace) -> dict[str, Any]:
    """One question through thyme's own path (runner.ask_one), the script's tokens in place of samples."""
    from thyme_cli.engine.llama.engine import LlamaEngine
    from thyme_cli.models.loading import LoadedModel
    from thyme_cli.models.spec import ModelSpec
    from thyme_cli.question.assemble import ask_one, open_question_sandbox, prepare_input
    from thyme_cli.question.loop import AgentOptions, QuietEvents
    from thyme_cli.question.settings import QuestionSettings

    work = Path(args.work)
    replies: list[str] = json.loads((work / "replies.json").read_text())
    options = thyme_defaults()
    t0 = time.perf_counter()
    engine = LlamaEngine.load(args.model, args.mmproj, options=options)
    load_s = time.perf_counter() - t0
    native = engine.native
    script = [native.tokenize(r) for r in replies]
    queue = [t for reply in script for t in reply]
    real_sample = native.sample
    served = 0

    def scripted_sample(sampler: Any) -> int:
        nonlocal served
        real_sample(sampler)  # the real sampling work (and its time inside llama.cpp)
        token = queue[served]
        served += 1
        return token

    native.sample = scripted_sample  # type: ignore[method-assign]
    # Record the evaluated stream, and where the generated runs are, for the limit runs.
    captured: dict[str, Any] = {}
    real_open = engine.open

    def open_and_watch(*a: Any, **k: Any) -> Any:
        conv = real_open(*a, **k)
        gen_ranges: list[tuple[int, int]] = []
        real_generate, real_close = conv.generate, conv.close

        def generate(**kw: Any) -> Any:
            start = len(conv._live.stream)
            out = real_generate(**kw)
            gen_ranges.append((start, len(conv._live.stream)))
            return out

        def close() -> None:
            captured["stream"] = list(conv._live.stream)
            captured["gen_ranges"] = gen_ranges
            captured["counters"] = conv.counters
            real_close()

        conv.generate, conv.close = generate, close
        return conv

    engine.open = open_and_watch  # type: ignore[method-assign]
    spec = ModelSpec(name="thyme-bench", protocol="thyme", model_path=Path(args.model), mmproj_path=Path(args.mmproj))
    run_dir = work / "run-thyme"
    settings = QuestionSettings(agent=AgentOptions(max_turns=5, max_step_tokens=2048))
    wall0 = time.perf_counter()
    image = prepare_input(Path(args.photo), run_dir, label=None, remove_on_error=False)
    s0 = time.perf_counter()
    sandbox = open_question_sandbox(image, run_dir, settings)
    sandbox_open_s = time.perf_counter() - s0
    trace = ask_one(LoadedModel(engine, spec), image, QUESTION, run_dir, settings, QuietEvents(), sandbox=sandbox)
    question_s = time.perf_counter() - wall0
    c = captured["counters"]
    if served != len(queue) or trace.stop_reason != "answered" or len(trace.steps) != 2:
        raise SystemExit(
            f"the scripted question did not run as scripted: {trace.stop_reason} "
            f"({trace.stop_detail}), {len(trace.steps)} steps, {served}/{len(queue)} tokens"
        )
    # Save the stream for the limit runs: token ids, and each image as the exact pixels evaluated.
    items: list[Any] = []
    for i, item in enumerate(captured["stream"]):
        if isinstance(item, int):
            items.append(item)
        else:
            path = work / f"stream-image-{i}.png"
            Image.frombytes("RGB", (item.width, item.height), item.rgb).save(path)
            items.append(str(path))
    (work / "stream.json").write_text(json.dumps({"items": items, "gen_ranges": captured["gen_ranges"]}))
    sandbox_steps_s = sum(s.duration_s for s in trace.steps)
    n_images = sum(1 for it in items if isinstance(it, str))
    gen_tokens = sum(b - a for a, b in captured["gen_ranges"])
    # tokens_evaluated counts fed text and image tokens; the stream's ints are fed + generated text.
    image_tokens = c.tokens_evaluated - (sum(1 for it in items if isinstance(it, int)) - gen_tokens)
    parts = Parts(
        image_encode_s=c.image_encode_s,
        images_encoded=c.images_encoded,
        image_tokens=image_tokens,
        prefill_s=c.prefill_s,
        prefill_tokens=c.tokens_evaluated,
        decode_s=c.decode_s,
        decode_tokens=c.tokens_generated,
        extra={
            "question_s": question_s,
            "load_s": load_s,
            "native_s": c.native_s,
            "sandbox_s": sandbox_open_s + sandbox_steps_s,
            "sandbox_steps_s": sandbox_steps_s,
            "image_load_s": c.image_load_s,
            "n_images": n_images,
            "overhead_s": question_s - c.native_s - sandbox_open_s - sandbox_steps_s,
            "n_threads": native.n_threads,
            "n_threads_batch": native.n_threads_batch,
            "n_ctx": native.n_ctx,
            "kv_cache_type": options.kv_cache_type,
            "flash_attn": native.flash_attn,
            "mmproj_flash_attn": options.mmproj_flash_attn,
            "image_max_tokens": options.image_max_tokens,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    engine.close()
    return asdict(parts)


def phase_limit(args: argparse.Namespace) -> dict[str, Any]:
    """The recorded stream with nothing but llama.cpp: each part timed at ``--threads``."""
    from dataclasses import replace

    from thyme_cli.engine.images import load_image
    from thyme_cli.engine.llama.engine import _image_sizing
    from thyme_cli.engine.llama.native import Native, inspect_files

    work = Path(args.work)
    stream = json.loads((work / "stream.json").read_text())
    gen = [False] * len(stream["items"])
    for a, b in stream["gen_ranges"]:
        for i in range(a, b):
            gen[i] = True
    threads, kv, flash, mmproj_flash = parse_setting(args.setting)
    options = replace(thyme_defaults(), n_threads=threads)
    switch = {"on": True, "off": False, "auto": None}
    if kv:
        options = replace(options, kv_cache_type=kv)
    if flash:
        options = replace(options, flash_attn=switch[flash])
    if mmproj_flash:
        options = replace(options, mmproj_flash_attn=switch[mmproj_flash])
    projector = inspect_files(Path(args.model), Path(args.mmproj))
    sizing = _image_sizing(projector, options)
    native = Native(Path(args.model), Path(args.mmproj), options, projector, (sizing.min_tokens, sizing.max_tokens))
    parts = Parts()
    pos = 0
    run: list[int] = []

    def flush() -> None:
        nonlocal pos, run
        if run:
            t0 = time.perf_counter()
            native.decode_tokens(run, pos)
            parts.prefill_s += time.perf_counter() - t0
            parts.prefill_tokens += len(run)
            pos += len(run)
            run = []

    for item, generated in zip(stream["items"], gen, strict=True):
        if isinstance(item, str):
            flush()
            img = load_image(Path(item), sizing)
            with native.tokenize_multimodal(IMAGE_MARKER, [img], add_special=False) as chunks:
                chunk = next(ch for ch in chunks if ch.image)
                t0 = time.perf_counter()
                embd = native.encode_image(chunk)
                parts.image_encode_s += time.perf_counter() - t0
                parts.images_encoded += 1
                t0 = time.perf_counter()
                pos = native.decode_image(chunk, embd, pos)
                parts.prefill_s += time.perf_counter() - t0
                parts.prefill_tokens += chunk.n_tokens
                parts.image_tokens += chunk.n_tokens
        elif generated:
            flush()
            t0 = time.perf_counter()
            native.decode_one(item, pos)
            parts.decode_s += time.perf_counter() - t0
            parts.decode_tokens += 1
            pos += 1
        else:
            run.append(item)
    flush()
    parts.extra = {"threads": threads, "setting": args.setting, "peak_rss_mb": peak_rss_mb()}
    native.close()
    return asdict(parts)


def phase_stock(args: argparse.Namespace) -> dict[str, Any]:
    """llama-cpp-python's own chat path: the full history each turn, replies forced to the script."""
    import llama_cpp
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler

    from thyme_cli.question.prompts import SYSTEM_PROMPT, observation, user_prompt

    work = Path(args.work)
    replies: list[str] = json.loads((work / "replies.json").read_text())
    crops = json.loads((work / "crops.json").read_text())
    # The same weight buffers as thyme's engine (engine/cpu_probe: llama.cpp's AMX path crashes on
    # some CPUs): the Llama class has no keyword for them, so its default-params factory is wrapped.
    from thyme_cli.engine.llama import cpu_probe

    real_defaults = low.llama_model_default_params
    keep_alive: list[Any] = []

    def defaults() -> Any:
        p = real_defaults()
        keep_alive.append(cpu_probe.apply(p, Path(args.model), cpu_only=True)[0])
        return p

    low.llama_model_default_params = defaults
    options = thyme_defaults()
    cpus = os.cpu_count() or 1
    handler = Qwen25VLChatHandler(clip_model_path=args.mmproj, verbose=False)
    t0 = time.perf_counter()
    llm = Llama(
        model_path=args.model,
        chat_handler=handler,
        n_ctx=options.n_ctx,
        verbose=False,
        n_threads=max(1, cpus // 2),
        n_threads_batch=cpus,
    )
    handler._init_mtmd_context(llm)
    load_s = time.perf_counter() - t0
    photo = Path(args.photo)
    w, h = Image.open(photo).size

    def image_part(p: Path) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": p.resolve().as_uri()}}

    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                image_part(photo),
                {"type": "text", "text": user_prompt(QUESTION, "/mnt/data/input.jpg", w, h).replace(IMAGE_MARKER, "")},
            ],
        },
    ]
    turns = []
    wall0 = time.perf_counter()
    for i, reply in enumerate(replies):
        forced = llm.tokenize(reply.encode(), add_bos=False, special=True)
        step = {"k": 0}

        def force(_ids: Any, scores: Any, forced: list[int] = forced, step: dict[str, int] = step) -> Any:
            out = np.full_like(scores, -np.inf)
            out[forced[min(step["k"], len(forced) - 1)]] = 0.0
            step["k"] += 1
            return out

        t0 = time.perf_counter()
        out = llm.create_chat_completion(
            messages=messages,
            max_tokens=len(forced),
            temperature=0.0,  # type: ignore[arg-type]
            logits_processor=llama_cpp.LogitsProcessorList([force]),
        )
        text = out["choices"][0]["message"]["content"] or ""  # type: ignore[index]
        turns.append({"wall_s": time.perf_counter() - t0, "forced": len(forced), "decoded": step["k"]})
        messages.append({"role": "assistant", "content": text})
        if i < len(crops):
            obs = observation(n_images=1, stdout="", error=None)
            before, _, after = obs.partition(IMAGE_MARKER)
            content: list[dict[str, Any]] = [
                {"type": "text", "text": before},
                image_part(Path(crops[i])),
                {"type": "text", "text": after},
            ]
            messages.append({"role": "user", "content": content})
    question_s = time.perf_counter() - wall0
    llm.close()
    return {"question_s": question_s, "load_s": load_s, "turns": turns, "peak_rss_mb": peak_rss_mb()}


def phase_load(args: argparse.Namespace) -> dict[str, Any]:
    """Load the pair and evaluate one token: from a cold page cache (files evicted) or a warm one,
    with the weights mapped (thyme's default) or read into private memory (--no-mmap)."""
    from dataclasses import replace

    from thyme_cli.engine.llama.engine import LlamaEngine

    files = [Path(args.model), Path(args.mmproj)]
    evicted = drop_page_cache(files) if args.cold else False
    options = replace(thyme_defaults(), use_mmap=not args.no_mmap)
    t0 = time.perf_counter()
    engine = LlamaEngine.load(args.model, args.mmproj, options=options)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.native.decode_tokens([engine.native.tokenize("Hello")[0]], 0)
    first_eval_s = time.perf_counter() - t0
    engine.close()
    return {
        "cold": args.cold,
        "mmap": not args.no_mmap,
        "evicted": evicted,
        "load_s": load_s,
        "first_eval_s": first_eval_s,
        "peak_rss_mb": peak_rss_mb(),
    }


PHASES = {"thyme": phase_thyme, "limit": phase_limit, "stock": phase_stock, "load": phase_load}


def run_phase(name: str, common: list[str], *extra: str, timeout: float | None = None) -> dict[str, Any]:
    out = Path(common[common.index("--work") + 1]) / f"{name}-{'-'.join(extra) or 'x'}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--result", str(out), *common, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} {' '.join(extra)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    cpus = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--threads",
        default=",".join(str(t) for t in sorted({1, max(1, cpus // 2), cpus})),
        help=f"settings the limit is measured at, comma-separated: {SETTING_FORM}, e.g. "
        "1,2,2:q8_0:on,2:f16:off,2:f16:on:off; the limit takes the best per part",
    )
    parser.add_argument("--skip-stock", action="store_true", help="leave out the stock llama-cpp-python run")
    parser.add_argument(
        "--stock-timeout-factor",
        type=float,
        default=0.0,
        help="stop the stock run after this many times thyme's question time and report "
        "stock_over_thyme as at least that (0: let it finish; on 2 cores it takes over an hour)",
    )
    parser.add_argument("--skip-load", action="store_true", help="leave out the cold/warm load timings")
    parser.add_argument(
        "--skip-limit",
        action="store_true",
        help="leave out the limit runs (e.g. for thyme's own timings and peak RSS only)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small photo and short replies (for testing the benchmark; not its figures)",
    )
    # internal: one phase in this process
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mmproj", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-mmap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = PHASES[args.phase](args)
        Path(args.result).write_text(json.dumps(result))
        return
    settings = [t.strip() for t in args.threads.split(",") if t.strip()]
    for setting in settings:
        parse_setting(setting)  # bad settings fail here, before anything runs
    grid = sorted({parse_setting(t)[0] for t in settings})

    t0 = time.perf_counter()
    pair = ensure_pair(args.shape, progress=lambda m: print(f"  writing {m}", file=sys.stderr, flush=True))
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="thyme-scale-") as tmp:
        work = Path(tmp)
        photo = work / "photo.jpg"
        write_photo(photo, QUICK_PHOTO if args.quick else PHOTO)
        (work / "replies.json").write_text(json.dumps(QUICK_REPLIES if args.quick else REPLIES))
        common = ["--work", str(work), "--model", str(pair.model), "--mmproj", str(pair.mmproj), "--photo", str(photo)]
        report: dict[str, Any] = {"shape": args.shape, "pair_build_s": round(build_s, 1)}
        if not args.skip_load:
            report["load_cold"] = run_phase("load", common, "--cold")
            report["load_warm"] = run_phase("load", common)
            report["load_warm_no_mmap"] = run_phase("load", common, "--no-mmap")
        print("running the question through thyme ...", file=sys.stderr, flush=True)
        thyme = run_phase("thyme", common)
        crops = sorted(str(p) for p in (work / "run-thyme" / "images").rglob("*.png"))
        (work / "crops.json").write_text(json.dumps(crops))
        limits = {}
        for setting in [] if args.skip_limit else settings:
            print(f"measuring the limit at {setting} ...", file=sys.stderr, flush=True)
            try:
                limits[setting] = run_phase("limit", common, "--setting", setting)
            except SystemExit as e:  # e.g. a quantized V cache without flash attention: say so, go on
                print(f"the limit at {setting} failed and is left out: {e}", file=sys.stderr, flush=True)
        stock = None
        if not args.skip_stock:
            factor = args.stock_timeout_factor
            budget = factor * thyme["extra"]["question_s"] if factor > 0 else None
            print(
                "running the stock llama-cpp-python path"
                + (f" (stopped after {budget:.0f} s) ..." if budget else " ..."),
                file=sys.stderr,
                flush=True,
            )
            try:
                # + 30 s for its model load, which its question time does not count
                stock = run_phase("stock", common, timeout=budget + 30 if budget else None)
            except subprocess.TimeoutExpired:
                stock = {
                    "finished": False,
                    "question_s": budget,
                    "turns": [],
                    "peak_rss_mb": None,
                    "at_least_factor": factor,
                }
    report_figures(args, report, thyme, limits, stock, grid)


def report_figures(
    args: argparse.Namespace,
    report: dict[str, Any],
    thyme: dict[str, Any],
    limits: dict[str, dict[str, Any]],
    stock: dict[str, Any] | None,
    grid: list[int],
) -> None:
    x = thyme["extra"]
    q = x["question_s"]
    # Without limit runs (--skip-limit), thyme's own parts stand in, so the limit columns read as 1.0.
    runs = limits or {"thyme": {**thyme, "extra": {**x, "threads": None, "setting": None}}}
    best = {
        part: min(runs.values(), key=lambda r, p=part: r[p]) for part in ("image_encode_s", "prefill_s", "decode_s")
    }
    limit_s = sum(best[p][p] for p in best)
    wb = weight_bytes(args.shape)
    shape = SHAPES[args.shape]
    kv_dim = shape.n_head_kv * (shape.n_embd // shape.n_head)
    # KV cache read per decoded token at the question's mean context length (f16 K and V).
    mean_ctx = thyme["prefill_tokens"] + thyme["decode_tokens"] / 2
    kv_bytes = mean_ctx * shape.n_layer * 2 * kv_dim * 2
    per_token = wb["per_token"] + kv_bytes
    bw = max(memory_bandwidth_gbs(t) for t in grid)
    bound_tps = bw * 1e9 / per_token
    decode_tps = thyme["decode_tokens"] / thyme["decode_s"] if thyme["decode_s"] else 0.0
    prefill_tps = thyme["prefill_tokens"] / thyme["prefill_s"] if thyme["prefill_s"] else 0.0
    print(
        f"shape {args.shape}: Q4_K_M language model {wb['total'] / 1e9:.2f} GB, f16 projector "
        f"{wb['projector'] / 1e9:.2f} GB; {x['n_images']} images ({thyme['image_tokens']} image tokens), "
        f"{thyme['prefill_tokens']} tokens evaluated, {thyme['decode_tokens']} decoded"
    )
    print(
        f"thyme defaults: {x['n_threads']} decode / {x['n_threads_batch']} batch threads, n_ctx {x['n_ctx']}, "
        f"KV {x['kv_cache_type']}, flash_attn {x['flash_attn']} (projector {x.get('mmproj_flash_attn')}; None: auto)"
    )
    print("part            | thyme s  | " + " | ".join(f"limit {t:>8s}" for t in limits))
    for part, label in (("image_encode_s", "image encodes"), ("prefill_s", "prefill"), ("decode_s", "decode")):
        print(f"{label:15s} | {thyme[part]:8.2f} | " + " | ".join(f"{limits[t][part]:14.2f}" for t in limits))
    print(f"sandbox         | {x['sandbox_s']:8.2f} |")
    print(
        f"thyme overhead  | {x['overhead_s']:8.2f} |  "
        f"(wall - llama.cpp - sandbox; image files {x['image_load_s']:.2f} s)"
    )
    print(f"question (wall) | {q:8.2f} |  limit {limit_s:.2f} s")
    print(
        f"prefill {prefill_tps:.1f} tok/s, decode {decode_tps:.2f} tok/s; memory bandwidth {bw:.1f} GB/s, "
        f"{per_token / 1e9:.2f} GB read per token -> bound {bound_tps:.2f} tok/s"
    )
    stock_done = bool(stock) and stock.get("finished", True)
    if stock and stock_done:
        print(
            f"stock llama-cpp-python: {stock['question_s']:.2f} s "
            f"({[round(t['wall_s'], 1) for t in stock['turns']]} per turn), "
            f"peak RSS {stock['peak_rss_mb']:.0f} MB"
        )
    elif stock:
        print(
            f"stock llama-cpp-python: not finished after {stock['question_s']:.0f} s "
            f"({stock['at_least_factor']:g} x thyme's question), stopped"
        )
    for key in ("load_cold", "load_warm", "load_warm_no_mmap"):
        if key in report:
            r = report[key]
            print(
                f"{key}: load {r['load_s']:.2f} s + first evaluation {r['first_eval_s']:.2f} s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
                + ("" if r["evicted"] or not r["cold"] else " (page cache could not be dropped)")
            )
    print(
        f"peak RSS: thyme {x['peak_rss_mb']:.0f} MB, "
        f"limit {max(r['extra']['peak_rss_mb'] for r in runs.values()):.0f} MB"
    )
    best_decode = best["decode_s"]
    result = {
        "shape": args.shape,
        "quick": args.quick,
        "question_s": round(q, 2),
        "limit_s": round(limit_s, 2) if limits else None,
        "over_limit": round(q / limit_s, 3) if limits else None,
        "stock_s": round(stock["question_s"], 2) if stock_done else None,
        "stock_over_thyme": round(stock["question_s"] / q, 2) if stock_done else None,
        # the stock run was stopped (--stock-timeout-factor): its time is at least this many times thyme's
        "stock_over_thyme_at_least": stock["at_least_factor"] if stock and not stock_done else None,
        "image_encode_share": round(thyme["image_encode_s"] / q, 4),
        "prefill_share": round(thyme["prefill_s"] / q, 4),
        "decode_share": round(thyme["decode_s"] / q, 4),
        "sandbox_share": round(x["sandbox_s"] / q, 4),
        "overhead_share": round(x["overhead_s"] / q, 4),
        "prefill_tokens_per_s": round(prefill_tps, 2),
        "decode_tokens_per_s": round(decode_tps, 3),
        "threads_thyme": {"decode": x["n_threads"], "batch": x["n_threads_batch"]},
        "attention_thyme": {
            "kv": x["kv_cache_type"],
            "flash_attn": x["flash_attn"],
            "mmproj_flash_attn": x.get("mmproj_flash_attn"),
        },
        "threads_best": {p.removesuffix("_s"): best[p]["extra"]["threads"] for p in best} if limits else None,
        "setting_best": {p.removesuffix("_s"): best[p]["extra"]["setting"] for p in best} if limits else None,
        "defaults_over_best_decode": round(thyme["decode_s"] / best_decode["decode_s"], 3) if limits else None,
        # thyme's part / the best limit run's part (thyme's prefill also tokenizes and preprocesses images)
        "defaults_over_best": {p.removesuffix("_s"): round(thyme[p] / best[p][p], 3) for p in best} if limits else None,
        "memory_bandwidth_gbs": round(bw, 2),
        "decode_over_bandwidth_bound": round(decode_tps / bound_tps, 3),
        "peak_rss_mb": round(x["peak_rss_mb"]),
        "stock_peak_rss_mb": round(stock["peak_rss_mb"]) if stock_done else None,
        "load_cold_s": round(report["load_cold"]["load_s"] + report["load_cold"]["first_eval_s"], 2)
        if "load_cold" in report
        else None,
        "load_warm_s": round(report["load_warm"]["load_s"] + report["load_warm"]["first_eval_s"], 2)
        if "load_warm" in report
        else None,
        "load_warm_no_mmap_s": round(
            report["load_warm_no_mmap"]["load_s"] + report["load_warm_no_mmap"]["first_eval_s"], 2
        )
        if "load_warm_no_mmap" in report
        else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
