"""The root `thyme` command: wiring only. Each command group lives in thyme_cli/commands/.

Kept light on purpose: `thyme --help` must not import llama_cpp, cv2, numpy or huggingface_hub.
"""

from __future__ import annotations

import typer

from thyme_cli import __version__
from thyme_cli.commands import ask, batch, doctor, models, replay, runs, serve
from thyme_cli.commands import eval as eval_cmd

app = typer.Typer(
    name="thyme",
    help="Ask a vision-language model about an image; it may write and run sandboxed Python "
    "(crop, rotate, enhance, compute) before it answers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"thyme {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_print_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """thyme: think with images, on your own machine."""


app.command("ask")(ask.ask)
app.command("batch")(batch.batch)
app.command("doctor")(doctor.doctor)
app.command("replay")(replay.replay)
app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve.serve)
app.add_typer(models.app, name="models")
app.add_typer(runs.app, name="runs")
app.add_typer(eval_cmd.app, name="eval")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
