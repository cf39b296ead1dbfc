"""Items per minute of `thyme batch --backend openai` with --jobs 1 vs --jobs 4, on a real local server.

Usage: python benchmarks/remote_bench.py [--items N] [--size WxH] [--sandbox auto|nsjail|bwrap|none]

The server is llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``,
the ``server`` extra) serving the tiny random-weight Qwen2.5-VL pair with its Qwen2.5-VL chat
handler, on 127.0.0.1. A GBNF grammar (sent through THYME_API_EXTRA_BODY) makes the model write
one real crop step per item, so every item costs what a Thyme item costs on the client: two
requests with images as data URIs, one sandboxed code run, the run directory and the journal.

What to expect: llama_cpp.server handles ONE request at a time (a global lock; it has no
n_parallel), and this machine may have 2 cores. --jobs 4 overlaps only the client-side work
(sandbox start-up and the code run, image encoding, HTTP, files) with the server's work, so the
gain is well below 4x here; vLLM and SGLang batch concurrent requests on the GPU and gain more.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from thyme_cli.devtools.tiny_gguf import write_tiny_pair

CROP = (
    "<think>zoom</think><code>\n```python\nimg = Image.open(image_path)\n"
    "img.crop((0, 0, img.width // 2, img.height // 2)).save('/mnt/data/temp_processed_images/c.png')\n"
    "print('/mnt/data/temp_processed_images/c.png')\n```\n</code>"
)


def _gbnf(text: str) -> str:
    return 'root ::= "' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    pair = write_tiny_pair(work / "model")
    port = _free_port()
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(pair.model), "--clip_model_path",
         str(pair.mmproj), "--chat_format", "qwen2.5-vl", "--model_alias", "tiny", "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "8192", "--n_threads", "1", "--n_threads_batch", "1",
         "--interrupt_requests", "False", "--verbose", "False"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited ({proc.returncode}); see {work / 'server.log'}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("llama_cpp.server did not start within 60 s")


def run_batch(url: str, images: Path, out: Path, jobs: int, sandbox: str) -> float:
    """Seconds for the whole `thyme batch` invocation (model probe included, CLI start-up not)."""
    from thyme_cli.agent import AgentOptions
    from thyme_cli.batch_inputs import collect_items
    from thyme_cli.commands.batch import execute_batch
    from thyme_cli.runner import ModelSettings, QuestionSettings

    items = collect_items([str(images)], "what is in the top-left corner?", stdin=None)
    started = time.perf_counter()
    summary = execute_batch(
        items, output=str(out), resume=False, shard=None, runs=None, jobs=jobs,
        model_settings=ModelSettings(backend="openai", base_url=url, max_image_tokens=256),
        question_settings=QuestionSettings(sandbox=sandbox, agent=AgentOptions(max_turns=1, max_step_tokens=400)),
        assume_yes=True, interactive=False,
    )
    seconds = time.perf_counter() - started
    if summary.counts.get("answered", 0) != len(items):
        raise SystemExit(f"--jobs {jobs}: not every item was answered: {dict(summary.counts)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--size", default="640x480", help="input image size, WxH")
    parser.add_argument("--sandbox", default="auto")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="thyme-remote-bench-") as tmp:
        work = Path(tmp)
        os.environ["THYME_HOME"] = str(work / "home")
        os.environ["THYME_API_EXTRA_BODY"] = json.dumps({"grammar": _gbnf(CROP)})
        for var in ("THYME_API_KEY", "OPENAI_API_KEY"):
            os.environ.pop(var, None)
        images = work / "images"
        images.mkdir()
        for i in range(args.items):
            Image.effect_noise((width, height), 40 + i).convert("RGB").save(images / f"img{i:03d}.png")
        proc, url = start_server(work)
        try:
            warm = work / "warm"
            warm.mkdir()
            Image.effect_noise((width, height), 7).convert("RGB").save(warm / "w.png")
            run_batch(url, warm, work / "warm.jsonl", 1, args.sandbox)  # imports, sandbox probe, server warm-up
            rates, split = {}, {}
            for jobs in (1, 4):
                seconds = run_batch(url, images, work / f"jobs{jobs}.jsonl", jobs, args.sandbox)
                rates[jobs] = args.items / seconds * 60
                split[jobs] = _split(work / f"jobs{jobs}.jsonl")
                print(f"--jobs {jobs}: {args.items} items in {seconds:.2f} s = {rates[jobs]:.1f} items/min",
                      file=sys.stderr)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    print(json.dumps({
        "items": args.items, "image_size": args.size, "cpus": os.cpu_count(), "python": platform.python_version(),
        "server": "llama_cpp.server (qwen2.5-vl handler, one request at a time), tiny random-weight model",
        "jobs1_items_per_min": round(rates[1], 2), "jobs4_items_per_min": round(rates[4], 2),
        # Where an item's time went at --jobs 1: waiting for the server vs everything else here.
        "jobs1_server_s_per_item": split[1][0], "jobs1_client_s_per_item": split[1][1],
        "jobs4_over_jobs1": round(rates[4] / rates[1], 3),
    }))


def _split(results: Path) -> tuple[float, float]:
    """Mean seconds per item spent in model requests, and in the rest (sandbox, images, files)."""
    records = [json.loads(line) for line in results.read_text().splitlines()]
    model = sum(r["timings"]["model_s"] for r in records) / len(records)
    total = sum(r["timings"]["item_s"] for r in records) / len(records)
    return round(model, 3), round(total - model, 3)


if __name__ == "__main__":
    main()
