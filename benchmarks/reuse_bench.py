"""Never pay twice: what reusing work across questions and processes saves, on the real-shape 3B model.

Usage: python benchmarks/reuse_bench.py [--shape 3b|7b] [--image-tokens N] [--reply-tokens N] [--quick]

The model pair is the random-weight Qwen2.5-VL-3B shape from thyme_cli.devtools.real_shape_gguf
(cached in ~/.cache/thyme-bench/); timing does not depend on weight values. Each question is
Thyme's system prompt, the 1600x1200 photo and the user prompt, then a short reply (--reply-tokens,
greedy): the parts reuse changes are the prefill and the image encode, so the replies are kept
short to keep the benchmark short.

Two processes share one THYME_HOME (so one prompt-state directory):
- first: one question in a fresh home -- evaluates the system prompt and saves its state;
- second: two questions about the same photo -- the first loads the system prompt's state from
  disk, the second resumes after the image the first left in the context.

A third process times --decode-tokens decode steps for one sequence, then for four sequences
forked from the same prompt (engine/parallel.py: one llama_decode per step for all of them).

Figures: ``second_ask_prefill_saved_s`` (prefill of the first process's question minus the
second's), ``second_question_over_first`` (wall time of the 2nd question on the same image over
the 1st, in the second process), ``decode_tok_s_jobs4_over_jobs1`` (tokens/s of four sequences
decoded together over one, engine level), ``samples4_over_samples1`` (wall time of
`thyme ask --samples 4` over `--samples 1`, whole processes with the model load, one turn of at
least 16 tokens at temperature 1, no saved prompt state; ``samples4_over_samples1_engine`` is the
same from the engine-level parts), ``items_per_min_jobs4_over_jobs1`` (`thyme batch` on
--batch-items photos, one question and one turn each, --jobs 4 over --jobs 1: the local engine
runs the items as sequences of one context).
Figures taken on a loaded machine are not final. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import add_model, write_photo  # this folder, as the script's

from thyme_cli.devtools.real_shape_gguf import SHAPES, ensure_pair

QUESTIONS = ["What does the sign next to the door say?", "What colour is the door?"]


def phase_ask(args: argparse.Namespace) -> dict[str, Any]:
    """Questions about one photo through the engine, each timed by its counters and wall clock."""
    from thyme_cli.engine.llama.engine import LlamaEngine
    from thyme_cli.engine.settings import EngineOptions
    from thyme_cli.models.registry import load_registry
    from thyme_cli.question.prompts import SYSTEM_PROMPT, user_prompt

    options = EngineOptions.from_spec(load_registry().get("thyme-7b"), max_image_tokens=args.image_tokens)
    t0 = time.perf_counter()
    engine = LlamaEngine.load(args.model, args.mmproj, options=options)
    load_s = time.perf_counter() - t0
    photo = Path(args.photo)
    from PIL import Image

    with Image.open(photo) as im:
        size = im.size
    out: list[dict[str, Any]] = []
    for question in args.questions.split("|"):
        t0 = time.perf_counter()
        conv = engine.open()
        conv.feed_system(SYSTEM_PROMPT)
        conv.feed_user(user_prompt(question, "/mnt/data/input.jpg", *size), [photo])
        gen = conv.generate(max_tokens=args.reply_tokens)
        c = conv.counters
        conv.close()
        out.append(
            {
                "wall_s": time.perf_counter() - t0,
                "prefill_s": c.prefill_s,
                "image_encode_s": c.image_encode_s,
                "decode_s": c.decode_s,
                "tokens_evaluated": c.tokens_evaluated,
                "images_encoded": c.images_encoded,
                "tokens_generated": gen.n_tokens,
                "prompt_state_loaded": getattr(c, "prompt_state_loaded", False),
                "prompt_state": engine.prompt_store.last_event if engine.prompt_store else None,
            }
        )
        print(f"  {question!r}: {out[-1]}", file=sys.stderr, flush=True)
    engine.close()
    return {"load_s": load_s, "questions": out}


def phase_parallel(args: argparse.Namespace) -> dict[str, Any]:
    """Decode tokens for one sequence, then for four forked from the same prefix, one llama_decode per step."""
    from dataclasses import replace

    from thyme_cli.engine.llama.engine import LlamaEngine
    from thyme_cli.engine.llama.parallel import ParallelDecoder
    from thyme_cli.engine.llama.sampling import AtsSamplers
    from thyme_cli.engine.settings import EngineOptions, SamplingOptions
    from thyme_cli.models.registry import load_registry
    from thyme_cli.question.prompts import SYSTEM_PROMPT

    options = replace(
        EngineOptions.from_spec(load_registry().get("thyme-7b"), max_image_tokens=args.image_tokens), n_seq=4
    )
    engine = LlamaEngine.load(args.model, args.mmproj, options=options)
    native = engine.native
    prompt = native.tokenize(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    native.decode_tokens(prompt, 0)
    n = args.decode_tokens
    samplers = [AtsSamplers(SamplingOptions(temperature=1.0, seed=i), native.n_vocab) for i in range(4)]
    timings: dict[str, float] = {}
    with ParallelDecoder(native) as dec:
        for width in (1, 4):
            # Sequence 0 back to the prompt, its last token evaluated again (fresh logits), then forked.
            native.seq_rm(len(prompt) - 1)
            native.decode_one(prompt[-1], len(prompt) - 1)
            for seq in range(width):
                dec.fork(0, seq)
            t0 = time.perf_counter()
            for step in range(n):
                dec.step([(seq, dec.sample(seq, samplers[seq].prose), len(prompt) + step) for seq in range(width)])
            timings[f"decode_s_{width}"] = time.perf_counter() - t0
            print(
                f"  {width} sequence(s): {n} steps in {timings[f'decode_s_{width}']:.2f} s", file=sys.stderr, flush=True
            )
    for s in samplers:
        s.close()
    engine.close()
    return {"prompt_tokens": len(prompt), "decode_tokens": n, **timings}


def batch_items_per_min(pair: Any, home: Path, args: argparse.Namespace) -> dict[str, float]:
    """`thyme batch` on --batch-items photos (one question each, --reply-tokens of at least 16),
    with --jobs 1 and --jobs 4: items per minute, each run in its own process."""
    env = {**os.environ, "THYME_HOME": str(home)}
    cli = [sys.executable, "-m", "thyme_cli.cli"]
    add_model(cli, env, "bench", pair)
    photos = home / "photos"
    photos.mkdir(exist_ok=True)
    for i in range(args.batch_items):
        write_photo(photos / f"p{i}.jpg", (1600 - 40 * i, 1200), sign=False)
    out: dict[str, float] = {}
    for jobs in (1, 4):
        cmd = [
            *cli,
            "batch",
            str(photos),
            "-q",
            QUESTIONS[0],
            "-m",
            "bench",
            "--jobs",
            str(jobs),
            "--max-tokens",
            str(max(16, args.reply_tokens)),
            "--max-turns",
            "1",
            "-o",
            str(home / f"b{jobs}.jsonl"),
        ]
        if args.image_tokens:
            cmd += ["--max-image-tokens", str(args.image_tokens)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 3):
            raise SystemExit(f"batch --jobs {jobs} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        out[f"batch_s_jobs{jobs}"] = wall
        out[f"items_per_min_jobs{jobs}"] = 60 * args.batch_items / wall
        print(f"  batch --jobs {jobs}: {args.batch_items} items in {wall:.1f} s", file=sys.stderr, flush=True)
    return out


def samples_wall(pair: Any, home: Path, args: argparse.Namespace) -> dict[str, float]:
    """`thyme ask --samples 1` and `--samples 4` on the photo (one turn of --reply-tokens, at least
    16, temperature 1), each in its own process with no saved prompt state: wall seconds."""
    env = {**os.environ, "THYME_HOME": str(home), "THYME_PROMPT_STATE_MB": "0"}
    cli = [sys.executable, "-m", "thyme_cli.cli"]
    add_model(cli, env, "bench-s", pair)
    out: dict[str, float] = {}
    for n in (1, 4):
        cmd = [
            *cli,
            "ask",
            str(home / "photo.jpg"),
            QUESTIONS[0],
            "-m",
            "bench-s",
            "--samples",
            str(n),
            "--temperature",
            "1.0",
            "--max-tokens",
            str(max(16, args.reply_tokens)),
            "--max-turns",
            "1",
            "--quiet",
            "--out",
            str(home / f"samples{n}"),
        ]
        if args.image_tokens:
            cmd += ["--max-image-tokens", str(args.image_tokens)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out[f"ask_s_samples{n}"] = time.perf_counter() - t0
        if proc.returncode not in (0, 3):
            raise SystemExit(f"ask --samples {n} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        print(f"  ask --samples {n}: {out[f'ask_s_samples{n}']:.1f} s", file=sys.stderr, flush=True)
    return out


def run_phase(common: list[str], home: Path, questions: list[str], phase: str = "ask") -> dict[str, Any]:
    result = home / f"result-{phase}-{len(questions)}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        phase,
        "--result",
        str(result),
        "--questions",
        "|".join(questions),
        *common,
    ]
    env = {**os.environ, "THYME_HOME": str(home)}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"phase failed ({proc.returncode})")
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument(
        "--image-tokens",
        type=int,
        default=None,
        help="image token budget (default: the thyme-7b entry's, as `thyme ask` uses)",
    )
    parser.add_argument("--reply-tokens", type=int, default=16, help="tokens decoded per question")
    parser.add_argument("--batch-items", type=int, default=4, help="photos in the batch --jobs 1 / 4 runs (0: skip)")
    parser.add_argument(
        "--decode-tokens", type=int, default=32, help="decode steps timed for 1 and for 4 parallel sequences"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 256-token image budget, 4-token replies, 8 decode steps, 2 batch items "
        "(to test the benchmark, not its figures)",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--questions", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mmproj", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase = phase_parallel if args.phase == "parallel" else phase_ask
        Path(args.result).write_text(json.dumps(phase(args)))
        return
    if args.quick:
        args.image_tokens, args.reply_tokens, args.decode_tokens = args.image_tokens or 256, 4, 8
        args.batch_items = min(args.batch_items, 2)
    pair = ensure_pair(args.shape, progress=lambda m: print(f"  writing {m}", file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="thyme-reuse-") as tmp:
        home = Path(tmp)
        photo = home / "photo.jpg"
        write_photo(photo, (1600, 1200), sign=False)
        common = [
            "--model",
            str(pair.model),
            "--mmproj",
            str(pair.mmproj),
            "--photo",
            str(photo),
            "--reply-tokens",
            str(args.reply_tokens),
            "--decode-tokens",
            str(args.decode_tokens),
        ]
        if args.image_tokens:
            common += ["--image-tokens", str(args.image_tokens)]
        print("first process: one question, fresh prompt-state directory", file=sys.stderr, flush=True)
        first = run_phase(common, home, QUESTIONS[:1])["questions"][0]
        print("second process: two questions about the same photo", file=sys.stderr, flush=True)
        second = run_phase(common, home, QUESTIONS)["questions"]
        print("third process: decode steps for 1 and for 4 sequences of one context", file=sys.stderr, flush=True)
        par = run_phase(common, home, [], phase="parallel")
        print("samples: ask --samples 1 and --samples 4", file=sys.stderr, flush=True)
        sampled = samples_wall(pair, home, args)
        batch: dict[str, float] = {}
        if args.batch_items:
            print("batch: the same photos with --jobs 1 and --jobs 4", file=sys.stderr, flush=True)
            batch = batch_items_per_min(pair, home, args)
    assert first["prompt_state"] == "saved" and second[0]["prompt_state_loaded"], (first, second)
    assert second[1]["images_encoded"] == 0, second
    prefill = first["prefill_s"] + first["image_encode_s"]
    figures = {
        "shape": args.shape,
        "image_tokens": args.image_tokens,
        "reply_tokens": args.reply_tokens,
        "first_process_question_s": round(first["wall_s"], 3),
        "first_process_prefill_s": round(first["prefill_s"], 3),
        "second_process_prefill_s": round(second[0]["prefill_s"], 3),
        "second_ask_prefill_saved_s": round(first["prefill_s"] - second[0]["prefill_s"], 3),
        "first_question_s": round(second[0]["wall_s"], 3),
        "second_question_s": round(second[1]["wall_s"], 3),
        "second_question_over_first": round(second[1]["wall_s"] / second[0]["wall_s"], 4),
        "tokens_evaluated": [first["tokens_evaluated"], second[0]["tokens_evaluated"], second[1]["tokens_evaluated"]],
        "decode_tokens": par["decode_tokens"],
        "decode_tok_s_1": round(par["decode_tokens"] / par["decode_s_1"], 3),
        "decode_tok_s_4": round(4 * par["decode_tokens"] / par["decode_s_4"], 3),
        "decode_tok_s_jobs4_over_jobs1": round(4 * par["decode_s_1"] / par["decode_s_4"], 3),
        **{k: round(v, 3) for k, v in batch.items()},
        "items_per_min_jobs4_over_jobs1": (
            round(batch["items_per_min_jobs4"] / batch["items_per_min_jobs1"], 3) if batch else None
        ),
        **{k: round(v, 3) for k, v in sampled.items()},
        "samples4_over_samples1": round(sampled["ask_s_samples4"] / sampled["ask_s_samples1"], 4),
        # Engine level: the first question's encode + prefill once, then --decode-tokens steps for 4
        # sequences over the same for 1.
        "samples4_over_samples1_engine": round((prefill + par["decode_s_4"]) / (prefill + par["decode_s_1"]), 4),
        "cpus": len(os.sched_getaffinity(0)),
    }
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
