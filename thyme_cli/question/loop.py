"""The Think -> Act -> Observe loop for one question. The engine and sandbox are passed in.

Each turn the model continues its reasoning until it closes a code block or an answer. Code runs
in the sandbox; what comes back (images, or printed text and errors) is fed to the model and the
turn continues. When the turn budget is spent, a final turn asks for the answer, so every run ends
with an answer or a stated reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from thyme_cli.defaults import MAX_TOKENS, MAX_TURNS
from thyme_cli.engine.base import Conversation, Generation
from thyme_cli.errors import BackendUnavailable, EngineError
from thyme_cli.question import prompts
from thyme_cli.question.answers import clean_answer
from thyme_cli.question.input_image import InputImage
from thyme_cli.question.trace import Step, Trace, Turn
from thyme_cli.sandbox.base import ExecResult, Sandbox

MAX_IMAGES_PER_STEP = 3


@dataclass
class AgentOptions:
    max_turns: int = MAX_TURNS  # code steps the model may take before it must answer
    max_step_tokens: int = MAX_TOKENS  # generation budget of one turn
    on_error: Literal["show", "retry"] = "show"  # show a failed step to the model, or discard and retry it
    max_retries: int = 2
    retry_warm: bool = True  # a retried turn's prose is sampled warm (False: greedy, as the paper's eval)
    retries_use_turns: bool = False  # a discarded attempt counts against max_turns (as the paper's eval)
    tools: bool = True  # False: the ablation without code (the model answers directly)


class AgentEvents(Protocol):
    """What a live display hears about; every method is optional to act on."""

    def text(self, chunk: str) -> None: ...
    def step_started(self, index: int, code: str) -> None: ...
    def step_finished(self, step: Step, result: ExecResult) -> None: ...
    def note(self, message: str) -> None: ...


class QuietEvents:
    def text(self, chunk: str) -> None:
        pass

    def step_started(self, index: int, code: str) -> None:
        pass

    def step_finished(self, step: Step, result: ExecResult) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def answer_question(
    conv: Conversation,
    sandbox: Sandbox,
    trace: Trace,
    image: InputImage,
    run_dir: Path,
    options: AgentOptions,
    events: AgentEvents,
) -> Trace:
    """Run one question to its end, filling in ``trace`` as it goes."""
    started = time.perf_counter()
    generic = trace.protocol != "thyme"
    conv.feed_system(prompts.system_prompt(trace.protocol, tools=options.tools))
    if not options.tools:
        conv.feed_user(prompts.direct_prompt(trace.question), [image.path])
        gen = _generate(conv, trace, options, events)
        reply = prompts.parse_reply(gen.text)
        if reply.answer is not None:
            if reply.answer_truncated and gen.stop_reason == "max_tokens":
                return _truncated(trace, reply.answer, gen, started, conv)
            if (answer := clean_answer(reply.answer)) is not None:
                return _finish(trace, "answered", answer, started, conv)
        return _final_answer(conv, trace, options, events, started, generic)
    conv.feed_user(prompts.user_prompt(trace.question, sandbox.image_path, image.width, image.height), [image.path])
    if generic and hasattr(conv, "use_fences"):
        conv.use_fences(True)  # a closing ``` ends a code turn, as </code> does
    retries = repeats = 0
    request_fed = False
    while len(trace.steps) + repeats + (retries if options.retries_use_turns else 0) < options.max_turns:
        rewind = _rewinder(conv, options)
        mark = rewind.checkpoint() if rewind else 0
        gen = _generate(conv, trace, options, events, lenient_fences=generic)
        reply = prompts.parse_reply(gen.text, lenient_fences=generic)
        if reply.answer is not None:
            if reply.answer_truncated and gen.stop_reason == "max_tokens":
                return _truncated(trace, reply.answer, gen, started, conv)
            if (answer := clean_answer(reply.answer)) is not None:
                return _finish(trace, "answered", answer, started, conv)
            trace.notes.append(
                f"turn {len(trace.turns)}: the answer was empty or the prompt's placeholder; not taken as an answer"
            )
            break
        if reply.code is None:
            trace.notes.append(_why_no_code(gen, reply))
            break
        if reply.extra_code_blocks:
            note = f"turn {len(trace.turns)} wrote {reply.extra_code_blocks + 1} code blocks; only the first ran"
            trace.notes.append(note)
            events.note(note)
        last = trace.steps[-1] if trace.steps else None
        final = len(trace.steps) + repeats + (retries if options.retries_use_turns else 0) + 1 >= options.max_turns
        if last is not None and reply.code.strip() == last.code.strip():
            repeats += 1
            note = f"turn {len(trace.turns)} repeated step {last.index}'s code; it was not run again"
            trace.notes.append(note)
            events.note(note)
            _feed_observation(conv, generic, prompts.repeated_code_observation(last.index), [], final=final)
            request_fed = final and generic
            continue
        step, result = _run_step(sandbox, reply.code, len(trace.steps) + 1, len(trace.turns), run_dir, events)
        if not result.ok and rewind and retries < options.max_retries:
            retries += 1
            events.note(f"step failed; discarding it and retrying ({retries}/{options.max_retries})")
            trace.turns[-1].discarded = True
            trace.notes.append(
                f"turn {len(trace.turns)}: its step failed and was discarded; the model was asked "
                f"again (--on-error retry {retries}/{options.max_retries})"
            )
            _rollback(rewind, mark, warm=options.retry_warm)
            continue
        trace.steps.append(step)
        try:
            _observe(conv, generic, result, [run_dir / p for p in step.images[:MAX_IMAGES_PER_STEP]], final=final)
            request_fed = final and generic
        except BackendUnavailable:
            raise
        except EngineError as e:
            trace.notes.append(f"could not show step {step.index}'s result to the model: {e.message}")
            break
    return _final_answer(conv, trace, options, events, started, generic, request_fed=request_fed)


def _rollback(conv: Conversation, mark: int, *, warm: bool) -> None:
    """Take the failed turn back; ``warm=False`` keeps a greedy engine greedy for the retried turn."""
    conv.rollback(mark, resample_warm=warm)


def _rewinder(conv: Conversation, options: AgentOptions) -> Conversation | None:
    """The conversation to rewind when --on-error retry is asked for (every Conversation can)."""
    return conv if options.on_error == "retry" else None


def _generate(
    conv: Conversation, trace: Trace, options: AgentOptions, events: AgentEvents, *, lenient_fences: bool = False
) -> Generation:
    """One model turn. A stop at an inline ``<code>x</code>`` in prose (no code block) is not the
    end of the turn: generation goes on, within the same token budget."""
    t0 = time.perf_counter()
    gen = conv.generate(max_tokens=options.max_step_tokens, on_text=events.text)
    while gen.stop_reason == "code" and gen.n_tokens < options.max_step_tokens:
        reply = prompts.parse_reply(gen.text, lenient_fences=lenient_fences)
        if reply.code is not None or reply.code_truncated or reply.answer is not None:
            break
        more = conv.generate(max_tokens=options.max_step_tokens - gen.n_tokens, on_text=events.text)
        gen = Generation(gen.text + more.text, more.stop_reason, gen.n_tokens + more.n_tokens)
    trace.turns.append(Turn(len(trace.turns) + 1, gen.text, gen.stop_reason, gen.n_tokens, time.perf_counter() - t0))
    return gen


def _run_step(
    sandbox: Sandbox, code: str, index: int, turn: int, run_dir: Path, events: AgentEvents
) -> tuple[Step, ExecResult]:
    events.step_started(index, code)
    result = sandbox.run(code)
    step = Step.from_result(index, code, result, run_dir, turn=turn)
    events.step_finished(step, result)
    if len(step.images) > MAX_IMAGES_PER_STEP:
        events.note(f"step {index} made {len(step.images)} images; the model sees the first {MAX_IMAGES_PER_STEP}")
    return step, result


def _observe(conv: Conversation, generic: bool, result: ExecResult, images: list[Path], *, final: bool = False) -> None:
    text = prompts.observation(n_images=len(images), stdout=result.stdout, error=result.error)
    if result.notes:  # images the host left out (budgets): the model must not think they are shown
        head, tag, tail = text.rpartition("</sandbox_output>")
        text = head + "\n" + "\n".join(result.notes) + tag + tail
    _feed_observation(conv, generic, text, images, final=final)


def _feed_observation(conv: Conversation, generic: bool, text: str, images: list[Path], *, final: bool) -> None:
    """Give the model a step's result. For the generic protocol the result is a user turn, and
    after the last step the final-answer request joins it (no empty model turn in between)."""
    if generic:
        conv.feed_user(f"{text}\n\n{prompts.FINAL_ANSWER_REQUEST}" if final else text, images)
    else:
        conv.feed_assistant(text, images)


def _why_no_code(gen: Generation, reply: prompts.Reply) -> str:
    if reply.code_truncated:
        return f"turn {gen.stop_reason}: the code block was cut off by the token budget and was not run"
    return f"the model stopped ({gen.stop_reason}) without code or an answer"


def _final_answer(
    conv: Conversation,
    trace: Trace,
    options: AgentOptions,
    events: AgentEvents,
    started: float,
    generic: bool,
    *,
    request_fed: bool = False,
) -> Trace:
    """Ask for the answer once more, opening the answer tag for the model."""
    events.note("asking the model for its final answer")
    try:
        if generic:
            if not request_fed:
                conv.feed_user(prompts.FINAL_ANSWER_REQUEST)
            conv.feed_assistant("<answer>")
        else:
            conv.feed_assistant(prompts.FINAL_ANSWER_PREFIX)
        gen = _generate(conv, trace, options, events)
    except BackendUnavailable:
        raise
    except EngineError as e:
        trace.stop_detail = f"the final answer turn failed: {e.message}"
        return _finish(trace, "error", None, started, conv)
    closed = "</answer>" in gen.text.lower()
    raw = gen.text[: gen.text.lower().index("</answer>")] if closed else gen.text
    if gen.stop_reason == "max_tokens" and not closed:
        return _truncated(trace, raw, gen, started, conv)
    if (text := clean_answer(raw)) is not None:
        return _finish(trace, "answered", text, started, conv)
    fallback = next(
        (
            a
            for t in reversed(trace.turns)
            if t.stop_reason != "max_tokens"
            and not t.discarded
            and (a := clean_answer(prompts.untagged_answer(t.text)))
        ),
        None,
    )
    if fallback:
        return _finish(trace, "answered_untagged", fallback, started, conv)
    trace.stop_detail = trace.stop_detail or "the model gave no answer"
    return _finish(trace, "no_answer", None, started, conv)


def _truncated(trace: Trace, partial: str, gen: Generation, started: float, conv: Conversation) -> Trace:
    """An answer cut off by the token budget is not an answer; what it held so far is kept in the note."""
    cleaned = clean_answer(partial)
    more = "…" if cleaned is not None and len(cleaned) > 200 else ""
    shown = "" if cleaned is None else f': "{cleaned[:200]}{more}"'
    trace.notes.append(
        f"turn {len(trace.turns)}: the answer was cut off by the token budget ({gen.n_tokens} tokens){shown}"
    )
    trace.stop_detail = f"the answer was cut off by the token budget ({gen.n_tokens} tokens); raise --max-tokens"
    return _finish(trace, "truncated", None, started, conv)


def _finish(trace: Trace, reason: str, answer: str | None, started: float, conv: Conversation) -> Trace:
    trace.answer = answer
    trace.stop_reason = reason  # type: ignore[assignment]
    if not trace.stop_detail:
        trace.stop_detail = {
            "answered": f"answered after {len(trace.steps)} code step(s)",
            "answered_untagged": "the model answered without <answer> tags",
        }.get(reason, "")
    trace.counters = conv.counters.to_dict()
    trace.timings["total_s"] = round(time.perf_counter() - started, 3)
    trace.timings["model_s"] = round(sum(t.seconds for t in trace.turns), 3)
    trace.timings["sandbox_s"] = round(sum(s.duration_s for s in trace.steps), 3)
    return trace
