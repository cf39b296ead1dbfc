"""--samples N: trajectories from one shared prefix, decoded together, and a vote on their answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import RunThyme, add_model
from thyme_cli.devtools.tiny_gguf import TinyPair
from thyme_cli.question.samples import vote, vote_key


def test_vote_keys_read_option_letters_and_normalise_free_answers() -> None:
    assert [vote_key(a) for a in ["B", "(b)", "B. because it is red", "Answer: (C)", "option d"]] == [
        "B",
        "B",
        "B",
        "C",
        "D",
    ]
    assert vote_key("  The Red  CAR. ") == "the red car"
    assert vote_key("<answer>42</answer>") == "42"
    assert vote_key(None) is None


def test_the_majority_wins_and_a_tie_goes_to_the_higher_mean_log_probability() -> None:
    v = vote(["cat", "dog", "Cat.", None], [-2.0, -0.1, -1.0, None])
    assert v.votes == {"cat": 2, "dog": 1} and v.winner == 2  # the likelier of the two "cat" trajectories
    tie = vote(["A", "(B)", "b) blue", "a"], [-1.5, -0.2, -0.4, -1.0])
    assert tie.votes == {"A": 2, "B": 2} and tie.winner == 1
    assert vote([None, None], [None, None]).winner is None


def test_ask_samples_decodes_trajectories_from_one_prefix_and_records_them(
    run_thyme: RunThyme, tiny_pair: TinyPair, tmp_path: Path, sandbox_backend: str
) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (84, 112, 3), dtype=np.uint8)).save(photo)
    add_model(run_thyme, tiny_pair)
    out = tmp_path / "run"
    result = run_thyme(
        "ask",
        str(photo),
        "what is it?",
        "-m",
        "tiny",
        "--samples",
        "3",
        "--temperature",
        "1.0",
        "--max-tokens",
        "24",
        "--max-turns",
        "1",
        "--threads",
        "2",
        "--json",
        "--html",
        "--out",
        str(out),
    )
    assert result.returncode in (0, 3), result.stderr
    run = json.loads(result.stdout)
    assert [s["index"] for s in run["samples"]] == [1, 2, 3]
    assert all(s["error"] is None and s["mean_logprob"] is not None for s in run["samples"])
    traces = [json.loads((out / "samples" / f"s{k}" / "trace.json").read_text()) for k in (1, 2, 3)]
    # One encode, one system prompt: the later trajectories copy the first one's cells.
    assert [t["counters"]["images_encoded"] for t in traces] == [1, 0, 0]
    assert traces[1]["counters"]["tokens_evaluated"] < traces[0]["counters"]["tokens_evaluated"] / 2
    # Seeds differ, so prose differs between at least two trajectories.
    assert len({tuple(t["text"] for t in tr["turns"]) for tr in traces}) > 1
    assert sum(run["votes"].values()) == sum(1 for t in traces if t["answer"] is not None)
    html = (out / "report.html").read_text()
    assert 'id="samples"' in html and html.count('class="sample"') == 3


def test_samples_with_a_scripted_engine_vote_on_equal_answers(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (200, 100), "white").save(photo)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(["Looks like (B).</think>\n<answer>B. the red one</answer>"]))
    result = run_thyme("ask", str(photo), "which?", "--script", str(script), "--samples", "3", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["votes"] == {"B": 3} and run["answer"] == "B. the red one"
    assert [s["vote"] for s in run["samples"]] == ["B", "B", "B"]
    assert all(Path(run["run_dir"], s["run_dir"], "trace.json").is_file() for s in run["samples"])
