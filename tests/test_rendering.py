"""What people see: panels wrap long lines, a fenced code block is shown once (as its step),
inline <code> stays prose, the HTML report keeps the answer's lines and marks discarded turns
(checked in a real headless Chromium)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from tests.browser import chromium_or_skip, probe_page
from tests.test_ask import PROBE_SCRIPT
from thyme_cli.engine.scripted import ScriptedEngine
from thyme_cli.models.loading import LoadedModel
from thyme_cli.models.spec import ModelSpec
from thyme_cli.question.assemble import ask_one, prepare_input
from thyme_cli.question.loop import AgentOptions, QuietEvents
from thyme_cli.question.settings import QuestionSettings
from thyme_cli.question.trace import Step, Trace
from thyme_cli.sandbox.base import ExecResult
from thyme_cli.ui import render
from thyme_cli.ui.html_report import write_html_report

LONG = "x = '" + "abcdefghij" * 12 + "'"
FENCE = "I will measure.\n```python\nprint('width', Image.open(image_path).size[0])\n```"
FAILING = "<code>\n```python\nprint(undefined_name)\n```\n</code>"
OK_CODE = "<code>\n```python\nprint('width', Image.open(image_path).size[0])\n```\n</code>"


def _console(width: int = 50) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    # As err_console() / out_console() are: soft wrapping on (plain text is never cut there).
    return Console(file=buf, width=width, force_terminal=False, soft_wrap=True, highlight=False), buf


def _flat(text: str) -> str:
    """Panel content with borders and line breaks removed."""
    return "".join(line.strip("│ ") for line in text.splitlines())


def test_code_and_answer_panels_wrap_long_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    console, buf = _console()
    live = render.LiveRenderer(tmp_path, console=console, previews=None)
    live.step_started(1, LONG)
    assert "abcdefghij" * 12 in _flat(buf.getvalue())
    assert max(len(line) for line in buf.getvalue().splitlines()) <= 50
    out, out_buf = _console()
    out = Console(file=out_buf, width=50, force_terminal=True, soft_wrap=True, highlight=False, color_system=None)
    monkeypatch.setattr("thyme_cli.ui.console.out_console", lambda: out)
    trace = Trace(
        question="q",
        image="i.png",
        image_source="i.png",
        image_size=(1, 1),
        model="m",
        protocol="thyme",
        sandbox="none",
    )
    trace.answer = "the answer is " + "long " * 30 + "END"
    render.print_answer(trace, quiet=False)
    assert "END" in out_buf.getvalue() and _flat(out_buf.getvalue()).count("long") == 30


def test_fenced_code_is_shown_once_as_its_step(tmp_path: Path) -> None:
    console, buf = _console(100)
    live = render.LiveRenderer(tmp_path, console=console, previews=None)
    for i in range(0, len(FENCE), 5):
        live.text(FENCE[i : i + 5])
    live.step_started(1, "print('width', Image.open(image_path).size[0])")
    live.step_finished(Step(1, "...", stdout="width 640\n", turn=1), ExecResult(stdout="width 640\n"))
    shown = buf.getvalue()
    assert shown.count("Image.open(image_path)") == 1 and "I will measure." in shown


def test_inline_code_is_shown_as_prose_and_a_later_block_still_becomes_a_panel(tmp_path: Path) -> None:
    console, buf = _console(100)
    live = render.LiveRenderer(tmp_path, console=console, previews=None)
    text = "The <code>img</code> variable holds it.\n" + OK_CODE
    for i in range(0, len(text), 4):
        live.text(text[i : i + 4])
    shown = buf.getvalue()
    assert "The <code>img</code> variable holds it." in shown and "Image.open" not in shown


def test_report_keeps_answer_lines_shows_fence_code_once_and_marks_discarded_turns(
    tmp_path: Path, sandbox_backend: str
) -> None:
    chromium = chromium_or_skip()
    photo = tmp_path / "p.png"
    Image.new("RGB", (640, 480), "white").save(photo)

    def run(replies: list[str], protocol: str, on_error: str, name: str) -> Path:
        engine = ScriptedEngine(replies)
        model = LoadedModel(engine, ModelSpec(name="s", protocol=protocol, model_path=photo, mmproj_path=photo))
        run_dir = tmp_path / name
        image = prepare_input(photo, run_dir, label=str(photo), remove_on_error=False)
        settings = QuestionSettings(sandbox=sandbox_backend, agent=AgentOptions(on_error=on_error))  # type: ignore[arg-type]
        trace = ask_one(model, image, "how wide?", run_dir, settings, QuietEvents())
        return write_html_report(trace, run_dir)

    def seen(report: Path) -> dict[str, object]:
        probe = report.with_name("probe.html")
        probe.write_text(
            report.read_text().replace(
                "</body>",
                PROBE_SCRIPT.replace(
                    "code:",
                    "turns: [...document.querySelectorAll('pre.turn')].map(p => p.innerText), "
                    "discarded: document.querySelectorAll('.discarded').length, code:",
                )
                + "</body>",
            )
        )
        result: dict[str, object] = probe_page(chromium, probe, tmp_path / "chrome-profile")
        return result

    fenced = seen(run([FENCE, "<answer>640 px\nwide\nand white</answer>"], "generic", "show", "fenced"))
    assert fenced["answer"] == "Answer: 640 px\nwide\nand white"  # newlines kept
    page = json.dumps(fenced)
    assert page.count("Image.open(image_path)") == 1 and "[code: step 1 below]" in page

    retried = seen(run([FAILING, OK_CODE, "<answer>640</answer>"], "thyme", "retry", "retried"))
    assert retried["discarded"] == 1 and retried["steps"] == 1
