"""What loading quantized models without llama.cpp's extra buffer types costs, per CPU path.

Usage: python benchmarks/quant_bench.py [--quant Q4_K_M Q4_0 ...] [--layers N] [--threads N]

thyme turns llama.cpp's extra buffer types off (``use_extra_bufts=False``) where a child-process
probe saw them crash (engine/cpu_probe: the AMX path on VMs that list AMX but fault on it). This
measures prompt evaluation (``--prompt`` tokens in one batch) and decoding (``--gen`` single
tokens) on a random-weight `qwen2vl` model of Qwen2.5-1.5B's width (1536 wide, FFN 8960, GQA
12/2 heads; ``--layers`` deep, 8 by default: about 220 MB at Q4_K_M), built once and cached
under ~/.cache/thyme-bench. Each mode runs in a child process, so a crash is a result, not the end:

- ``off``: no extra buffer types (what thyme uses where the probe saw a crash);
- ``on``: llama.cpp's default (AMX first, then repacked layouts);
- ``repack``: only the CPU_REPACK buffer type, given to the Q4_0 / Q4_K layer matrices through
  ``tensor_buft_overrides`` -- what thyme uses where the probe saw AMX crash and repack run.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path.home() / ".cache" / "thyme-bench"
MODES = ("off", "on", "repack")


def build_model(quant: str, layers: int) -> Path:
    from thyme_cli.devtools.tiny_gguf import quantize_gguf, write_text_model

    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"quant-bench-1536x{layers}-{quant}.gguf"
    if out.exists():
        return out
    f32 = CACHE / f"quant-bench-1536x{layers}-f32.gguf.tmp"
    t0 = time.perf_counter()
    write_text_model(f32, n_embd=1536, n_layer=layers, n_head=12, n_head_kv=2, n_ff=8960, std=0.02)
    tmp = out.with_suffix(".tmp")
    quantize_gguf(f32, tmp, quant)
    f32.unlink()
    tmp.replace(out)
    print(f"built {out.name} ({out.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def repack_names(model: Path) -> list[str]:
    """The layer matrices thyme puts in CPU_REPACK after an AMX crash (engine/cpu_probe)."""
    from thyme_cli.engine.llama.cpu_probe import repack_tensor_names
    from thyme_cli.engine.llama.gguf_meta import read_tensor_types

    return repack_tensor_names(read_tensor_types(model))


def child(model: str, mode: str, names: str, threads: int, n_prompt: int, n_gen: int) -> None:
    import ctypes

    import llama_cpp

    def quiet(_level: int, _text: bytes | None, _user: Any) -> None:
        return None

    cb = llama_cpp.llama_log_callback(quiet)
    llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_extra_bufts = mode == "on"
    keep: list[Any] = []
    if mode == "repack":
        from thyme_cli.engine.llama.cpu_probe import repack_overrides

        overrides = repack_overrides(names.split(",") if names else [])
        if overrides is None:
            print(json.dumps({"mode": mode, "unavailable": "no CPU_REPACK buffer type or no repackable matrix"}))
            return
        keep.append(overrides)
        mp.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
    t0 = time.perf_counter()
    model_p = llama_cpp.llama_model_load_from_file(model.encode(), mp)
    load_s = time.perf_counter() - t0
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_prompt + n_gen + 16
    cp.n_batch = cp.n_ubatch = n_prompt
    cp.n_threads = cp.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model_p, cp)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model_p))
    batch = llama_cpp.llama_batch_init(n_prompt, 0, 1)
    for i in range(n_prompt):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = (
            (13 * i + 5) % 256,
            i,
            1,
            int(i == n_prompt - 1),
        )
        batch.seq_id[i][0] = 0
    batch.n_tokens = n_prompt
    t0 = time.perf_counter()
    assert llama_cpp.llama_decode(ctx, batch) == 0
    prompt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in range(n_gen):
        batch.token[0], batch.pos[0], batch.logits[0] = (7 * j + 1) % n_vocab, n_prompt + j, 1
        batch.n_tokens = 1
        assert llama_cpp.llama_decode(ctx, batch) == 0
    gen_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": mode,
                "load_s": round(load_s, 2),
                "prompt_tok_s": round(n_prompt / prompt_s, 1),
                "decode_tok_s": round(n_gen / gen_s, 2),
            }
        )
    )


def run_mode(model: Path, mode: str, names: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(model),
        mode,
        names,
        str(args.threads),
        str(args.prompt),
        str(args.gen),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode < 0:
        import signal

        return {"mode": mode, "crashed": signal.Signals(-proc.returncode).name}
    if proc.returncode != 0:
        return {"mode": mode, "failed": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        a = sys.argv[2:]
        child(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quant", nargs="+", default=["Q4_K_M", "Q4_0", "Q8_0"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=32)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for quant in args.quant:
        model = build_model(quant, args.layers)
        names = ",".join(repack_names(model))
        results[quant] = [run_mode(model, mode, names, args) for mode in MODES]
        for r in results[quant]:
            figures = (
                f"crashed ({r['crashed']})"
                if "crashed" in r
                else r.get("failed")
                or r.get("unavailable")
                or f"prompt {r['prompt_tok_s']:8.1f} tok/s   decode {r['decode_tok_s']:6.2f} tok/s   "
                f"load {r['load_s']:.2f} s"
            )
            print(f"{quant:7s} {r['mode']:7s} {figures}")
    print(
        json.dumps(
            {
                "threads": args.threads,
                "layers": args.layers,
                "prompt_tokens": args.prompt,
                "gen_tokens": args.gen,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
