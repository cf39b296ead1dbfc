"""The routed scripted engine: replies chosen by the question, so a benchmark's items can differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thyme_cli.engine.scripted import ScriptedEngine
from thyme_cli.errors import UsageError


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    return path


def test_routes_pick_replies_by_the_fed_question(tmp_path: Path) -> None:
    engine = ScriptedEngine.from_file(
        _write(
            tmp_path,
            {
                "routes": [
                    {"match": "A. maple", "replies": ["<answer>A</answer>"]},
                    {"match": "B. maple", "replies": ["<code>print(1)</code>", "<answer>B</answer>"]},
                ],
                "replies": ["<answer>no idea</answer>"],
            },
        )
    )
    assert engine.concurrent and len(engine.routes) == 2
    texts = {}
    for question in ("Options:\nA. cedar\nB. maple", "Options:\nA. maple\nB. cedar", "Options:\nA. oak"):
        conv = engine.open()
        conv.feed_system("sys")
        conv.feed_user(question)
        texts[question] = conv.generate(max_tokens=100).text
    assert list(texts.values()) == ["<code>print(1)</code>", "<answer>A</answer>", "<answer>no idea</answer>"]
    assert [c.route for c in engine.conversations] == ["B. maple", "A. maple", None]


def test_plain_scripts_still_replay_for_every_question(tmp_path: Path) -> None:
    engine = ScriptedEngine.from_file(_write(tmp_path, ["<answer>B</answer>"]))
    assert engine.replies == ["<answer>B</answer>"] and engine.routes == []


@pytest.mark.parametrize(
    "data",
    [
        {"routes": "x"},
        {"routes": [{"match": "", "replies": ["a"]}]},
        {"routes": [{"match": "q", "replies": "a"}]},
        {"routes": [], "replies": [1]},
    ],
)
def test_bad_route_files_are_usage_errors(tmp_path: Path, data: object) -> None:
    with pytest.raises(UsageError, match="script"):
        ScriptedEngine.from_file(_write(tmp_path, data))
