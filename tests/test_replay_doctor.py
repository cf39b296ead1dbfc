"""`thyme replay`, `thyme doctor`, the model download on first `ask`, and what the wheel ships."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from PIL import Image

from tests.conftest import REPO_ROOT, RunThyme
from tests.hub_fixtures import hub_fixture, tiny_files_fixture  # noqa: F401  (fixtures: hub, tiny_files)
from tests.hub_server import LocalHub

CROP = (
    "<code>\n```python\nimg = Image.open(image_path)\nw, h = img.size\n"
    "img.crop((0, 0, w // 2, h // 2)).save('/mnt/data/temp_processed_images/half.png')\n"
    "print('/mnt/data/temp_processed_images/half.png', w, h)\n```\n</code>"
)
FAILS = "<code>\n```python\nprint(1 / 0)\n```\n</code>"


def _run_ask(run_thyme: RunThyme, tmp_path: Path, replies: list[str], size: tuple[int, int] = (400, 200)) -> Path:
    image = tmp_path / "in.png"
    Image.new("RGB", size, "navy").save(image)
    script = tmp_path / "script.json"
    script.write_text(json.dumps([*replies, "<answer>done</answer>"]))
    out = tmp_path / "run"
    result = run_thyme("ask", str(image), "q", "--script", str(script), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_replay_reruns_the_steps_on_the_same_and_on_another_image(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    run = _run_ask(run_thyme, tmp_path, [CROP])
    again = run_thyme("replay", str(run / "trace.json"), "--json", "--out", str(tmp_path / "replay1"))
    assert again.returncode == 0, again.stderr
    first = json.loads(again.stdout)
    assert first["failed_steps"] == [] and first["steps"][0]["stdout"].split()[1:] == ["400", "200"]
    with Image.open(tmp_path / "replay1" / first["steps"][0]["images"][0]) as half:
        assert half.size == (200, 100)
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 300), "white").save(other)
    moved = run_thyme("replay", str(run), "--image", str(other), "--json", "--out", str(tmp_path / "replay2"))
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["steps"][0]["stdout"].split()[1:] == ["64", "300"]


def test_replay_exits_1_when_a_step_fails_and_2_for_a_bad_trace(
    run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    run = _run_ask(run_thyme, tmp_path, [FAILS])
    result = run_thyme("replay", str(run), "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "ZeroDivisionError" in result.stderr
    (tmp_path / "junk.json").write_text("{}")
    bad = run_thyme("replay", str(tmp_path / "junk.json"))
    assert bad.returncode == 2 and "not a thyme trace" in bad.stderr and "Traceback" not in bad.stderr


def test_doctor_reports_the_backend_that_really_starts(run_thyme: RunThyme, sandbox_backend: str) -> None:
    result = run_thyme("doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["llama-cpp-python"]["status"] == "ok"
    assert checks[f"sandbox: {sandbox_backend}"]["status"] == "ok"
    assert checks["sandbox"]["detail"] == f"--sandbox auto uses {sandbox_backend}"
    assert checks["models"]["status"] == "warn" and "thyme models pull" in checks["models"]["hint"]
    table = run_thyme("doctor")
    assert "thyme can run here" in table.stdout and "sandbox" in table.stdout


def test_doctor_fails_with_a_hint_on_a_corrupt_config(run_thyme: RunThyme, isolated_home: Path) -> None:
    (isolated_home / "config.toml").write_text("[models\n")
    result = run_thyme("doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["ok"] is False
    config = next(c for c in report["checks"] if c["name"] == "config")
    assert config["status"] == "fail" and "not valid TOML" in config["detail"]


def test_ask_downloads_a_missing_model_with_yes_and_refuses_without(
    hub: LocalHub, run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str
) -> None:
    image = tmp_path / "in.png"
    Image.new("RGB", (112, 84), "gray").save(image)
    refused = run_thyme("ask", str(image), "q", "-m", "tiny", "--max-tokens", "16", "--max-turns", "0")
    assert refused.returncode == 1
    assert "not downloaded" in refused.stderr and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    result = run_thyme(
        "ask", str(image), "q", "-m", "tiny", "--max-tokens", "16", "--max-turns", "0", "--yes", "--json"
    )
    assert result.returncode in (0, 3), result.stderr
    assert json.loads(result.stdout)["model"] == "tiny"
    listed = run_thyme("models", "list", "--json")
    assert any(m["name"] == "tiny" and m["installed"] for m in json.loads(listed.stdout))


def test_model_text_cannot_drive_the_terminal(run_thyme: RunThyme, tmp_path: Path, sandbox_backend: str) -> None:
    from thyme_cli.ui.render import terminal_safe

    evil = "<think>\x1b]0;pwned\x07\x1b[2J</think><answer>ok\x1b[31m</answer>"
    assert "\x1b" not in terminal_safe(evil) and "\\x1b" in terminal_safe(evil)
    image = tmp_path / "in.png"
    Image.new("RGB", (50, 50)).save(image)
    script = tmp_path / "s.json"
    script.write_text(json.dumps([evil]))
    result = run_thyme("ask", str(image), "q", "--script", str(script), env={"NO_COLOR": "1"})
    assert result.returncode == 0
    assert "\x1b" not in result.stderr  # NO_COLOR / not a terminal: no styling, and no model escapes
    assert result.stdout == "ok\x1b[31m\n"  # piped: the answer is data, passed through untouched


def test_inline_image_sequences_for_kitty_and_iterm(tmp_path: Path) -> None:
    import base64

    from thyme_cli.ui.term_images import inline_image_sequence

    image = tmp_path / "big.png"
    Image.new("RGB", (900, 600), "red").save(image)
    iterm = inline_image_sequence(image, "iterm")
    assert iterm is not None and iterm.startswith("\x1b]1337;File=inline=1;") and iterm.endswith("\x07")
    thumb = base64.b64decode(iterm.split(":", 1)[1][:-1])
    kitty = inline_image_sequence(image, "kitty")
    assert kitty is not None and kitty.startswith("\x1b_Ga=T,f=100,") and kitty.endswith("\x1b\\")
    from io import BytesIO

    with Image.open(BytesIO(thumb)) as small:
        assert max(small.size) == 256


def test_the_wheel_ships_models_toml(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("thyme_cli-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("thyme_cli/models.toml").decode()
    assert shipped == (REPO_ROOT / "models.toml").read_text()
    assert "[models.thyme-7b]" in shipped
