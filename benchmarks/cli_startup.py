"""CLI startup time: median wall time of `thyme --help` and `thyme models list`, as fresh processes.

People feel startup on every command, and a stray top-level import (huggingface_hub, numpy,
llama_cpp) is the usual culprit. Runs in an empty THYME_HOME / HF_HOME so the numbers do not
depend on this machine's config or cache.

Usage: python benchmarks/cli_startup.py [--runs 15]
The last line of output is one JSON object: {"help_wall_s": ..., "models_list_wall_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {"help_wall_s": ["--help"], "models_list_wall_s": ["models", "list"]}


def wall_times(args: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of RUNS fresh `python -m thyme_cli.cli ARGS` processes (after one warm-up run)."""
    cmd = [sys.executable, "-m", "thyme_cli.cli", *args]
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm the OS file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "THYME_HOME": os.path.join(home, "thyme"),
            "HF_HOME": os.path.join(home, "hf"),
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "120",
        }
        result: dict[str, object] = {"runs": runs, "python": sys.version.split()[0]}
        for key, args in COMMANDS.items():
            times = wall_times(args, runs, env)
            result[key] = round(statistics.median(times), 4)
            print(
                f"thyme {' '.join(args):<12} median {statistics.median(times):.3f} s "
                f"(min {min(times):.3f}, max {max(times):.3f}, {runs} runs)"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
