"""`thyme eval run`: a benchmark's rows turned into batch items, run as a batch (execute_batch: one
model load, journal, --resume, --shard, --jobs) with the paper's settings, then scored and saved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.errors import UsageError
from thyme_cli.eval.results import benchmark_meta, benchmark_name, score_and_save

if TYPE_CHECKING:
    from thyme_cli.eval.items import EvalItem
    from thyme_cli.eval.score import RunScore
    from thyme_cli.eval.store import EvalPaths
    from thyme_cli.models.loading import ModelSettings
    from thyme_cli.question.loop import AgentOptions
    from thyme_cli.question.settings import QuestionSettings


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate, and where its results go (the eval's own flags)."""

    benchmark: Path
    output: Path | None = None  # default: BENCHMARK.tools.jsonl / .no-tools.jsonl here
    no_tools: bool = False
    limit: int | None = None
    resume: bool = False
    shard: str | None = None
    jobs: int = 1
    runs: Path | None = None


@dataclass(frozen=True)
class EvalDone:
    """A finished eval: where its files are, its score and how many items failed."""

    paths: EvalPaths
    score: RunScore
    failed: int


def run_eval(
    request: EvalRequest,
    model: ModelSettings,
    question: QuestionSettings,
    *,
    assume_yes: bool,
    interactive: bool,
    warn_unsandboxed: Callable[[], None] = lambda: None,
) -> EvalDone:
    """Check the request, load the benchmark, record its side table, run it and score it. The eval
    puts the paper's settings on top of the flags' (_paper_settings). warn_unsandboxed() is called
    when code will run in the sandbox asked for (--no-tools needs none)."""
    from thyme_cli.batch.execute import execute_batch
    from thyme_cli.batch.inputs import Item
    from thyme_cli.eval.store import write_side_table

    paths, items = _load(request)
    flags_agent = question.agent
    model, question = _paper_settings(request, model, question)
    write_side_table(paths, items, _meta(request, items, model, flags_agent))
    if request.no_tools and question.sandbox == "auto":
        question = replace(question, sandbox="none")  # no code can run, so no jail is needed (works where none starts)
    else:
        warn_unsandboxed()
    summary = execute_batch(
        [Item(item.id, item.image, item.prompt, item.answer) for item in items],
        output=str(paths.results),
        resume=request.resume,
        shard=request.shard,
        runs=request.runs,
        jobs=request.jobs,
        model_settings=model,
        question_settings=question,
        assume_yes=assume_yes,
        interactive=interactive,
        command="eval",
    )
    return EvalDone(paths, score_and_save(paths), summary.counts.get("failed", 0))


def agent_options(*, no_tools: bool, max_turns: int, max_tokens: int, on_error: str) -> AgentOptions:
    """The agent's options; --no-tools: no code instructions in the prompt and no code turns.

    --on-error retry as the paper's evaluation does it (eval/paper.py): a discarded attempt uses up
    one of the max_turns steps, and the retried turn is generated with the same (greedy) sampling."""
    from thyme_cli.question.loop import AgentOptions

    return AgentOptions(
        max_turns=0 if no_tools else max_turns,
        max_step_tokens=max_tokens,
        on_error="retry" if on_error == "retry" else "show",
        tools=not no_tools,
        max_retries=max_turns,
        retry_warm=False,
        retries_use_turns=True,
    )


def _load(request: EvalRequest) -> tuple[EvalPaths, list[EvalItem]]:
    """The results' paths and the benchmark's items (this shard's); checks that --resume may continue."""
    from thyme_cli.batch.inputs import in_shard, parse_shard
    from thyme_cli.eval.load import load_benchmark
    from thyme_cli.eval.store import EvalPaths, check_resumable

    _check(request)
    shard_pos = parse_shard(request.shard) if request.shard else None
    paths = EvalPaths(request.output or _default_output(request.benchmark, request.no_tools, shard_pos))
    if paths.results.exists() and paths.results.stat().st_size > 0 and not request.resume:
        raise UsageError(
            f"{paths.results} already exists; nothing was overwritten",
            hint="add --resume to continue that eval, or choose another -o",
        )
    wanted = (lambda item_id: in_shard(item_id, *shard_pos)) if shard_pos else None
    items = load_benchmark(request.benchmark, paths.images.resolve(), wanted, limit=request.limit)
    if request.resume:
        check_resumable(paths, items, tools=not request.no_tools)
    return paths, items


def _check(request: EvalRequest) -> None:
    if request.output is not None and str(request.output) == "-":
        raise UsageError("eval scores its results file afterwards, so -o - (stdout) is not supported")
    if not request.benchmark.exists() and not request.benchmark.suffix:
        raise UsageError(
            f"{request.benchmark}: no such benchmark file, and not a command",
            hint="commands: thyme eval run FILE, thyme eval report R.jsonl, thyme eval compare A.jsonl B.jsonl",
        )


def _default_output(benchmark: Path, no_tools: bool, shard: tuple[int, int] | None) -> Path:
    part = f".shard{shard[0]}of{shard[1]}" if shard else ""
    return Path(f"{benchmark.stem}.{'no-tools' if no_tools else 'tools'}{part}.jsonl")


def _paper_settings(
    request: EvalRequest, model: ModelSettings, question: QuestionSettings
) -> tuple[ModelSettings, QuestionSettings]:
    """The paper's image-token budget (OCRBench: a larger minimum; --max-image-tokens replaces the
    maximum), a context a 16,384-token image fits in (unless --ctx), and the paper's agent options."""
    from thyme_cli.eval.paper import eval_context, paper_image_tokens

    agent = question.agent
    min_tokens, max_tokens = paper_image_tokens(benchmark_name(request.benchmark), model.max_image_tokens)
    ctx = eval_context(model.n_ctx, max_tokens, agent.max_turns, agent.max_step_tokens)
    paper = agent_options(
        no_tools=request.no_tools, max_turns=agent.max_turns, max_tokens=agent.max_step_tokens, on_error=agent.on_error
    )
    return (
        replace(model, n_ctx=ctx, max_image_tokens=max_tokens, min_image_tokens=min_tokens),
        replace(question, agent=paper),
    )


def _meta(request: EvalRequest, items: list[EvalItem], model: ModelSettings, flags: AgentOptions) -> dict[str, Any]:
    """The side table's record of the run: what was evaluated, with which model and settings (the
    model's as the eval runs it, the agent's as the flags gave them)."""
    name, script = benchmark_name(request.benchmark), model.script
    return {
        **benchmark_meta(request.benchmark, items),
        "tools": not request.no_tools,
        "items": len(items),
        "limit": request.limit,
        "model": model.name or (f"scripted:{script.name}" if script else model.api_model),
        "shard": request.shard,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "benchmark": name,
            "tools": not request.no_tools,
            "max_turns": flags.max_turns,
            "max_tokens": flags.max_step_tokens,
            "temperature": model.temperature,
            "on_error": flags.on_error,
            "max_image_tokens": model.max_image_tokens,
            "min_image_tokens": model.min_image_tokens,
            "ctx": model.n_ctx,
        },
    }
