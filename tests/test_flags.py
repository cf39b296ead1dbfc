"""The shared flags of ask / batch / eval become settings in one place, with the defaults named once."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from thyme_cli import defaults
from thyme_cli.commands import flags as o
from thyme_cli.commands.flags import Backend, OnError, RunFlags, SandboxChoice
from thyme_cli.models.loading import ModelSettings
from thyme_cli.question.loop import AgentOptions
from thyme_cli.question.settings import QuestionSettings
from thyme_cli.question.trace import Step
from thyme_cli.sandbox.base import ExecResult


def test_run_flags_take_the_shared_parameters_by_name() -> None:
    params = {"question": "what?", "top_k": 7, "backend": Backend.openai, "jobs": 4, "step_images": "10MP"}
    flags = RunFlags.of(params)
    assert (flags.top_k, flags.backend, flags.step_images) == (7, Backend.openai, "10MP")
    assert not hasattr(flags, "jobs") and not hasattr(flags, "question")


def test_defaults_agree_everywhere() -> None:
    model, question = RunFlags().settings()
    assert model == ModelSettings()
    assert (model.top_p, model.top_k, model.temperature, model.seed) == (
        defaults.TOP_P,
        defaults.TOP_K,
        defaults.TEMPERATURE,
        defaults.SEED,
    )
    assert question.step_timeout_s == QuestionSettings().step_timeout_s == defaults.STEP_TIMEOUT_S
    assert question.agent == AgentOptions()
    assert question.samples == defaults.SAMPLES


def test_settings_carry_the_flags() -> None:
    flags = RunFlags(model="m", ctx=4096, sandbox=SandboxChoice.none, on_error=OnError.retry, max_turns=2, samples=3)
    model, question = flags.settings(n_seq=3)
    assert (model.name, model.n_ctx, model.n_seq, model.backend) == ("m", 4096, 3, "local")
    assert (question.sandbox, question.agent.on_error, question.agent.max_turns, question.samples) == (
        "none",
        "retry",
        2,
        3,
    )
    assert question.limits is None
    assert RunFlags(step_images="1MP").question_settings().limits is not None


def test_step_from_result(tmp_path: Path) -> None:
    result = ExecResult(
        stdout="out",
        images=[tmp_path / "images" / "a.png", Path("/elsewhere/b.png")],
        duration_s=0.5,
        crops=[{"box": [0, 0, 1, 1]}],
    )
    step = Step.from_result(2, "print(1)", result, tmp_path, turn=1)
    assert (step.index, step.code, step.stdout, step.turn, step.duration_s) == (2, "print(1)", "out", 1, 0.5)
    assert step.images == ["images/a.png", "/elsewhere/b.png"]
    assert step.crops == [{"box": [0, 0, 1, 1]}]
    assert Step.from_result(2, "print(1)", result, tmp_path, crops=False).crops == []


def test_a_command_declares_the_shared_flags_once_and_receives_them_as_one() -> None:
    received: list[tuple[str, o.RunFlags, bool]] = []
    app = typer.Typer()

    @app.command()
    @o.with_run_flags(leave_out=("keep_images",), last=("script",), on_error=(o.OnErrorOpt, o.OnError.retry))
    def cmd(image: str, *, flags: o.RunFlags, loud: bool = typer.Option(False, "--loud")) -> None:
        received.append((image, flags, loud))

    result = CliRunner().invoke(app, ["x.png", "--top-k", "7", "--sandbox", "none", "--loud", "--script", "s.json"])
    assert result.exit_code == 0, result.output
    [(image, flags, loud)] = received
    assert (image, loud, flags.top_k, flags.sandbox, flags.script) == ("x.png", True, 7, "none", Path("s.json"))
    assert flags.on_error == o.OnError.retry and flags.keep_images == o.KeepImages.all  # replaced / left out
    assert "--keep-images" in CliRunner().invoke(app, ["--keep-images", "none", "x.png"]).output  # not an option
    names = [p.name for p in typer.main.get_command(app).params if "completion" not in (p.name or "")]
    assert names[:2] == ["image", "model"] and names[-2:] == ["loud", "script"]
