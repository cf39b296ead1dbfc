"""Fidelity to upstream Thyme: the differential corpus through the real jail, and the parity checks.

    .venv/bin/python benchmarks/fidelity_check.py [--no-parity]

1. Every case of tests/data/fidelity_corpus.toml runs through thyme's real sandbox (the backend
   `auto` picks) and is compared with what upstream's execute_code_in_sandbox produced
   (tests/data/fidelity_expected.json). `upstream_match` is the share of cases where upstream
   runs (does not raise) and thyme gives the same printed text, image count and pixels;
   documented improvements (cases where thyme deliberately differs, listed in docs/sandbox.md)
   are counted apart and must give their documented result.
2. Prompt-token, M-RoPE position and multi-turn logit parity with transformers on a tiny model
   with the real Qwen2.5-VL vocabulary, for the thyme and the generic protocol (needs the
   converter environment: `thyme models convert --setup`; reported as null without it).

Prints per-case results and ends with ONE line of JSON.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import fidelity_support as fs  # noqa: E402


def run_corpus(backend: str) -> dict[str, Any]:
    cases, expected = fs.load_corpus(), fs.load_expected()["cases"]
    matched = compared = improvements_ok = 0
    improvement_kinds: set[str] = set()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="thyme-fidelity-") as tmp:
        for case in cases:
            want = expected[case["id"]]["steps"]
            got = fs.run_in_thyme(case, backend, Path(tmp) / case["id"])
            problems = fs.compare(case, want, got)
            if "improvement" in case:
                improvement_kinds.add(case["improvement"].split(":")[0])
                improvements_ok += not problems
                status = "improvement " + ("ok" if not problems else "WRONG")
            elif any(step["raised"] for step in want):
                status = "upstream fails, thyme too" if not problems else "DIFFERENT"
            else:
                compared += 1
                matched += not problems
                status = "same as upstream" if not problems else "DIFFERENT"
            if problems:
                failures.append(case["id"])
            print(f"{case['id']:40s} {status}" + ("".join("\n    " + p for p in problems) if problems else ""))
    n_improvement_cases = sum("improvement" in c for c in cases)
    return {
        "cases": len(cases),
        "compared": compared,
        "matched": matched,
        "upstream_match": round(matched / compared, 4) if compared else None,
        "documented_improvements": len(improvement_kinds),
        "improvement_cases": n_improvement_cases,
        "improvement_cases_ok": improvements_ok,
        "failures": failures,
    }


def run_parity() -> dict[str, Any] | None:
    """The parity checks of tests/test_prompt_parity.py, outside pytest (same functions)."""
    from tests import test_prompt_parity as tp
    from thyme_cli.models.convert import env as convert_env

    venv = Path(os.environ.get("THYME_TEST_CONVERT_VENV", Path.home() / ".cache" / "thyme-test" / "convert-venv"))
    os.environ.setdefault("THYME_CONVERT_VENV", str(venv))
    env = convert_env.find_converter()
    if env is None or not (tp.QWEN_DATA / "vocab.json").is_file():
        print("parity: skipped (no converter environment or no real tokenizer files)")
        return None
    with tempfile.TemporaryDirectory(prefix="thyme-parity-") as tmp_name:
        tmp = Path(tmp_name)
        run_env = {**os.environ, "THYME_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1"}
        ckpt = tmp / "ckpt"
        subprocess.run(
            [str(env.python), "-I", str(tp.REFERENCE), "build", str(ckpt), str(tp.QWEN_DATA)],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
        thyme = [sys.executable, "-m", "thyme_cli.cli"]
        subprocess.run(
            [
                *thyme,
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
            ],
            check=True,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=1800,
        )
        paths = subprocess.run(
            [*thyme, "models", "path", "realvocab"], check=True, capture_output=True, text=True, env=run_env
        ).stdout.split()
        model, mmproj = Path(paths[0]), Path(paths[1])
        images = tp.make_images(tmp)
        out: dict[str, Any] = {}
        for protocol in ("thyme", "generic"):
            ours = tp.thyme_side(model, mmproj, images, protocol)
            (tmp / protocol).mkdir()
            ref = tp.reference(env.python, ckpt, tp.reference_request(protocol, ours, images), tmp / protocol)
            fig = tp.parity_figures(ours, ref)
            print(f"parity {protocol}: {json.dumps(fig)}")
            out[protocol] = fig
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-parity", action="store_true", help="only the corpus")
    args = parser.parse_args()
    from thyme_cli.sandbox.host.factory import probe_backends

    working = [p.name for p in probe_backends() if p.works]
    if not working:
        print("no sandbox backend starts here")
        return 1
    t0 = time.perf_counter()
    corpus = run_corpus(working[0])
    parity = None if args.no_parity else run_parity()
    result: dict[str, Any] = {
        "backend": working[0],
        "upstream_match": corpus["upstream_match"],
        "corpus_cases": corpus["cases"],
        "compared_with_upstream": corpus["compared"],
        "documented_improvements": corpus["documented_improvements"],
        "improvement_cases_ok": f"{corpus['improvement_cases_ok']}/{corpus['improvement_cases']}",
        "token_parity": None,
        "mrope_parity": None,
        "multi_turn_logit_max_abs_diff": None,
        "logit_tolerance": None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if parity is not None:
        from tests.test_prompt_parity import LOGITS_TOL

        result["token_parity"] = {p: f["tokens_equal"] for p, f in parity.items()}
        result["mrope_parity"] = all(f["positions_equal"] for f in parity.values())
        diffs = [d for f in parity.values() for d in f["logits_max_abs_diff_per_turn"]]
        result["multi_turn_logit_max_abs_diff"] = float(f"{max(diffs):.3g}") if diffs else None
        result["logit_tolerance"] = LOGITS_TOL
    print(json.dumps(result))
    return 0 if corpus["upstream_match"] == 1.0 and not corpus["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
