"""`thyme ask IMAGE QUESTION`: one question, shown live, saved as a run directory."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from thyme_cli import defaults as d
from thyme_cli.commands import flags as o
from thyme_cli.errors import EXIT_NO_ANSWER, EXIT_RUNTIME, UsageError
from thyme_cli.ui.console import handle_errors, info, warn


@handle_errors
def ask(
    image: Annotated[
        str,
        typer.Argument(
            help="The image (PNG, JPEG, WebP, TIFF, BMP) or a PDF (see --page), or '-' to read it from stdin."
        ),
    ],
    questions: Annotated[
        list[str],
        typer.Argument(
            help="What you want to know about it. Several questions are answered one after the other, "
            "each on its own (a run and an answer each); the image is encoded once for all.",
            metavar="QUESTION",
        ),
    ],
    model: o.ModelOpt = None,
    backend: o.BackendOpt = o.Backend.local,
    base_url: o.BaseUrlOpt = None,
    api_model: o.ApiModelOpt = None,
    protocol: o.ProtocolOpt = None,
    sandbox: o.SandboxOpt = o.SandboxChoice.auto,
    step_timeout: o.StepTimeoutOpt = d.STEP_TIMEOUT_S,
    step_images: o.StepImagesOpt = None,
    question_images: o.QuestionImagesOpt = None,
    on_error: o.OnErrorOpt = o.OnError.show,
    max_turns: o.MaxTurnsOpt = d.MAX_TURNS,
    samples: o.SamplesOpt = d.SAMPLES,
    max_tokens: o.MaxTokensOpt = d.MAX_TOKENS,
    temperature: o.TemperatureOpt = d.TEMPERATURE,
    top_p: o.TopPOpt = d.TOP_P,
    top_k: o.TopKOpt = d.TOP_K,
    seed: o.SeedOpt = d.SEED,
    ctx: o.CtxOpt = None,
    max_image_tokens: o.MaxImageTokensOpt = None,
    gpu_layers: o.GpuLayersOpt = None,
    threads: o.ThreadsOpt = None,
    flash_attn: o.FlashAttnOpt = None,
    chat_format: o.ChatFormatOpt = None,
    chat_template: o.ChatTemplateOpt = None,
    yes: o.YesOpt = False,
    page: Annotated[
        int | None, typer.Option("--page", min=1, help="For a PDF: the page to ask about (default 1).")
    ] = None,
    dpi: Annotated[
        float | None,
        typer.Option(
            "--dpi",
            help="For a PDF: render resolution (default: the page fits the model's image budget, at most 300 dpi).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory to create (default: a new one under the data dir).",
            rich_help_panel=o.OUTPUT_PANEL,
        ),
    ] = None,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="Also write report.html (self-contained) into the run directory.",
            rich_help_panel=o.OUTPUT_PANEL,
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object with the whole run on stdout.", rich_help_panel=o.OUTPUT_PANEL
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the answer.", rich_help_panel=o.OUTPUT_PANEL)
    ] = False,
    verbose: o.VerboseOpt = False,
    previews: Annotated[
        bool,
        typer.Option(
            "--previews/--no-previews",
            help="Thumbnails of new images in the terminal (kitty, "
            "iTerm2, sixel, else colour half-blocks; only when stderr is a terminal).",
            rich_help_panel=o.OUTPUT_PANEL,
        ),
    ] = True,
    script: o.ScriptOpt = None,
) -> None:
    """Ask questions about one image. Exit codes: 0 answered, 1 error, 2 bad usage, 3 no answer
    (for several questions: 1 if any failed, else 3 if any has no answer)."""
    from thyme_cli import paths
    from thyme_cli.models.loading import ModelSettings, load_model
    from thyme_cli.models.registry import load_registry
    from thyme_cli.models.store import preferred_default
    from thyme_cli.question import pdf
    from thyme_cli.question.assemble import ask_one, check_sandbox, prepare_input
    from thyme_cli.question.input_image import read_stdin_image
    from thyme_cli.question.loop import AgentOptions, QuietEvents
    from thyme_cli.question.settings import QuestionSettings
    from thyme_cli.question.trace import new_run_dir, prepare_out_dir
    from thyme_cli.ui.render import LiveRenderer, print_answer, print_summary

    if not questions or any(not q.strip() for q in questions):
        raise UsageError("the question is empty")
    from thyme_cli.ui.crash_guard import announce_run_dir, guard

    guard("ask")
    source: Path | bytes = read_stdin_image(sys.stdin.buffer) if image == "-" else Path(image).expanduser()
    registry = load_registry()
    label, pdf_note = image, None
    if isinstance(source, Path) and source.is_file() and pdf.is_pdf(source):
        entry = registry.models.get(model or preferred_default(registry))
        budget = pdf.pixel_budget(max_image_tokens or (entry.image_max_tokens if entry else None))
        source, pdf_note = pdf.render_page(source, page or 1, dpi=dpi, max_pixels=budget)
        label = f"{image}#p{page or 1}"
    elif page is not None or dpi is not None:
        raise UsageError("--page and --dpi apply to PDF input", hint=f"{image} is not a PDF")
    several = len(questions) > 1

    def make_run_dir(index: int) -> tuple[Path, bool]:
        """--out DIR holds one run, or DIR/q1, DIR/q2, ... for several questions."""
        target = (out / f"q{index + 1}" if several else out) if out else None
        created = target is None or not target.exists()
        run_dir = prepare_out_dir(target) if target else new_run_dir(paths.runs_dir(), questions[index])
        if created:
            announce_run_dir(run_dir)
        return run_dir, created

    run_dir, created = make_run_dir(0)
    input_image = prepare_input(source, run_dir, label=label, remove_on_error=created)
    if pdf_note:
        input_image.notes.insert(0, pdf_note)
    o.warn_if_unsandboxed(sandbox)
    settings = ModelSettings(
        name=model,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        n_ctx=ctx,
        max_image_tokens=max_image_tokens,
        gpu_layers=gpu_layers,
        threads=threads,
        flash_attn=flash_attn,
        chat_format=chat_format,
        chat_template=chat_template,
        script=script,
        backend=backend.value,
        base_url=base_url,
        api_model=api_model,
        protocol=protocol,
        n_seq=samples if backend == o.Backend.local and script is None else 1,
    )
    interactive = sys.stdin.isatty() and sys.stderr.isatty() and image != "-"
    if model is None and script is None and backend == o.Backend.local and not (quiet or as_json):
        from thyme_cli.models.store import default_model_note

        if note := default_model_note(registry):
            warn(note)
    question_settings = QuestionSettings(
        sandbox=sandbox.value,
        step_timeout_s=step_timeout,
        limits=o.sandbox_limits(step_images, question_images),
        agent=AgentOptions(max_turns=max_turns, max_step_tokens=max_tokens, on_error=on_error.value),
        samples=samples,
    )
    try:
        check_sandbox(question_settings)
        loaded = load_model(registry, settings, assume_yes=yes, interactive=interactive)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    live = not (quiet or as_json)
    from thyme_cli.runs import run_id

    failed = unanswered = False
    try:
        for index, question in enumerate(questions):
            if index:
                run_dir, created = make_run_dir(index)
                input_image = prepare_input(source, run_dir, label=label, remove_on_error=created)
                if pdf_note:
                    input_image.notes.insert(0, pdf_note)
            if several and live:
                info(f"question {index + 1} of {len(questions)}: {question}")
            events = LiveRenderer(run_dir, previews="auto" if previews else None) if live else QuietEvents()
            trace = ask_one(loaded, input_image, question, run_dir, question_settings, events)
            if html:
                from thyme_cli.ui.html_report import write_html_report

                write_html_report(trace, run_dir)
            if as_json:
                typer.echo(
                    json.dumps({**trace.to_dict(), "run_dir": str(run_dir), "id": run_id(run_dir)}, ensure_ascii=False)
                )
            else:
                if live:
                    print_summary(trace, run_dir, verbose=verbose)
                    listed = run_dir.resolve().is_relative_to(paths.runs_dir().resolve())  # --out DIR: by path
                    name = run_id(run_dir) if listed else str(run_dir)
                    info(f"run id {run_id(run_dir)} (see it again with `thyme runs show {name}`)")
                if trace.answer is not None:
                    print_answer(trace, quiet=quiet)
            if trace.stop_reason == "error":
                failed = True
            elif trace.answer is None:
                unanswered = True
                if not as_json:
                    from thyme_cli.ui.console import print_error

                    print_error(
                        f"no answer: {trace.stop_detail}"
                        if not several
                        else f"no answer to question {index + 1}: {trace.stop_detail}"
                    )
    finally:
        loaded.engine.close()
    if failed:
        raise typer.Exit(EXIT_RUNTIME)
    if unanswered:
        raise typer.Exit(EXIT_NO_ANSWER)
