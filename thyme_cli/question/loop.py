"""The Think -> Act -> Observe loop for one question. The engine and sandbox are passed in.

Each turn the model continues its reasoning until it closes a code block or an answer. Code runs
in the sandbox; what comes back (images, or printed text and errors) is fed to the model and the
turn continues. When the turn budget is spent, a final turn asks for the answer, so every run ends
with an answer or a stated reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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


@dataclass
class _Question:
    """One question in flight: what every step of the loop needs, and how much of the turn budget it used."""

    conv: Conversation
    sandbox: Sandbox
    trace: Trace
    run_dir: Path
    options: AgentOptions
    events: AgentEvents
    started: float = field(default_factory=time.perf_counter)
    retries: int = 0  # failed steps discarded and asked again (--on-error retry)
    repeats: int = 0  # turns that repeated the last step's code, which was not run again
    request_fed: bool = False  # the final-answer request already went in with the last step's result

    @property
    def generic(self) -> bool:
        """Not the Thyme protocol: results are user turns, and a closing ``` ends a code turn."""
        return self.trace.protocol != "thyme"

    def turns_used(self) -> int:
        """Turns counted against max_turns: steps run, repeats, and retries when they count."""
        return len(self.trace.steps) + self.repeats + (self.retries if self.options.retries_use_turns else 0)

    def note(self, message: str, *, show: bool = False) -> None:
        """Keep a note in the trace; ``show`` tells the live display too."""
        self.trace.notes.append(message)
        if show:
            self.events.note(message)


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
    q = _Question(conv, sandbox, trace, run_dir, options, events)
    conv.feed_system(prompts.system_prompt(trace.protocol, tools=options.tools))
    if not options.tools:
        return _answer_without_tools(q, image)
    _pose_question(q, image)
    while q.turns_used() < options.max_turns:
        mark = _checkpoint(q)
        gen = _generate(conv, trace, options, events, lenient_fences=q.generic)
        reply = prompts.parse_reply(gen.text, lenient_fences=q.generic)
        if reply.answer is not None:
            if done := _accept_answer(q, reply.answer, reply.answer_truncated, gen):
                return done
            q.note(f"turn {len(trace.turns)}: the answer was empty or the prompt's placeholder; not taken as an answer")
            break
        if reply.code is None:
            q.note(_why_no_code(gen, reply))
            break
        _note_extra_code_blocks(q, reply)
        final = q.turns_used() + 1 >= options.max_turns  # this turn's result is the last the model sees
        if _repeats_last_step(q, reply.code):
            _skip_repeated_step(q, final=final)
            continue
        step, result = _run_step(sandbox, reply.code, len(trace.steps) + 1, len(trace.turns), run_dir, events)
        if not result.ok and mark is not None and q.retries < options.max_retries:
            _discard_for_retry(q, mark)
            continue
        trace.steps.append(step)
        if not _show_result(q, step, result, final=final):
            break
    return _final_answer(q)


def _answer_without_tools(q: _Question, image: InputImage) -> Trace:
    """The ablation without code: the model answers straight from the image."""
    q.conv.feed_user(prompts.direct_prompt(q.trace.question), [image.path])
    gen = _generate(q.conv, q.trace, q.options, q.events)
    reply = prompts.parse_reply(gen.text)
    if reply.answer is not None and (done := _accept_answer(q, reply.answer, reply.answer_truncated, gen)):
        return done
    return _final_answer(q)


def _pose_question(q: _Question, image: InputImage) -> None:
    """Give the model the question and the image, saying where the image lies in the sandbox."""
    prompt = prompts.user_prompt(q.trace.question, q.sandbox.image_path, image.width, image.height)
    q.conv.feed_user(prompt, [image.path])
    if q.generic and hasattr(q.conv, "use_fences"):
        q.conv.use_fences(True)  # a closing ``` ends a code turn, as </code> does


def _checkpoint(q: _Question) -> int | None:
    """Where to rewind a failed step to; None unless --on-error retry is asked for."""
    rewind = _rewinder(q.conv, q.options)
    return rewind.checkpoint() if rewind else None


def _accept_answer(q: _Question, answer: str, truncated: bool, gen: Generation) -> Trace | None:
    """Finish on the model's answer; None when it is empty or the prompt's placeholder."""
    if truncated and gen.stop_reason == "max_tokens":
        return _truncated(q, answer, gen)
    if (cleaned := clean_answer(answer)) is not None:
        return _finish(q, "answered", cleaned)
    return None


def _note_extra_code_blocks(q: _Question, reply: prompts.Reply) -> None:
    if reply.extra_code_blocks:
        turn = len(q.trace.turns)
        q.note(f"turn {turn} wrote {reply.extra_code_blocks + 1} code blocks; only the first ran", show=True)


def _repeats_last_step(q: _Question, code: str) -> bool:
    return bool(q.trace.steps) and code.strip() == q.trace.steps[-1].code.strip()


def _skip_repeated_step(q: _Question, *, final: bool) -> None:
    """The same code again would give the same result: say so instead of running it."""
    q.repeats += 1
    last = q.trace.steps[-1].index
    q.note(f"turn {len(q.trace.turns)} repeated step {last}'s code; it was not run again", show=True)
    _feed_observation(q.conv, q.generic, prompts.repeated_code_observation(last), [], final=final)
    q.request_fed = final and q.generic


def _discard_for_retry(q: _Question, mark: int) -> None:
    """--on-error retry: take the failed turn back and let the model write it again."""
    q.retries += 1
    q.events.note(f"step failed; discarding it and retrying ({q.retries}/{q.options.max_retries})")
    q.trace.turns[-1].discarded = True
    q.note(
        f"turn {len(q.trace.turns)}: its step failed and was discarded; the model was asked "
        f"again (--on-error retry {q.retries}/{q.options.max_retries})"
    )
    _rollback(q.conv, mark, warm=q.options.retry_warm)


def _show_result(q: _Question, step: Step, result: ExecResult, *, final: bool) -> bool:
    """Feed a step's result to the model; False (with a note) when the engine could not take it."""
    try:
        _observe(q.conv, q.generic, result, [q.run_dir / p for p in step.images[:MAX_IMAGES_PER_STEP]], final=final)
    except BackendUnavailable:
        raise
    except EngineError as e:
        q.note(f"could not show step {step.index}'s result to the model: {e.message}")
        return False
    q.request_fed = final and q.generic
    return True


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


def _final_answer(q: _Question) -> Trace:
    """Ask for the answer once more, opening the answer tag for the model."""
    q.events.note("asking the model for its final answer")
    try:
        gen = _ask_for_answer(q)
    except BackendUnavailable:
        raise
    except EngineError as e:
        q.trace.stop_detail = f"the final answer turn failed: {e.message}"
        return _finish(q, "error", None)
    closed = "</answer>" in gen.text.lower()
    raw = gen.text[: gen.text.lower().index("</answer>")] if closed else gen.text
    if gen.stop_reason == "max_tokens" and not closed:
        return _truncated(q, raw, gen)
    if (text := clean_answer(raw)) is not None:
        return _finish(q, "answered", text)
    if fallback := _untagged_answer(q.trace):
        return _finish(q, "answered_untagged", fallback)
    q.trace.stop_detail = q.trace.stop_detail or "the model gave no answer"
    return _finish(q, "no_answer", None)


def _ask_for_answer(q: _Question) -> Generation:
    """The final turn: the generic protocol asks in a user turn (unless it went with the last result)."""
    if q.generic:
        if not q.request_fed:
            q.conv.feed_user(prompts.FINAL_ANSWER_REQUEST)
        q.conv.feed_assistant("<answer>")
    else:
        q.conv.feed_assistant(prompts.FINAL_ANSWER_PREFIX)
    return _generate(q.conv, q.trace, q.options, q.events)


def _untagged_answer(trace: Trace) -> str | None:
    """The latest kept, uncut turn that reads as an answer without tags, cleaned."""
    kept = (t for t in reversed(trace.turns) if t.stop_reason != "max_tokens" and not t.discarded)
    return next((a for t in kept if (a := clean_answer(prompts.untagged_answer(t.text)))), None)


def _truncated(q: _Question, partial: str, gen: Generation) -> Trace:
    """An answer cut off by the token budget is not an answer; what it held so far is kept in the note."""
    trace = q.trace
    cleaned = clean_answer(partial)
    more = "…" if cleaned is not None and len(cleaned) > 200 else ""
    shown = "" if cleaned is None else f': "{cleaned[:200]}{more}"'
    trace.notes.append(
        f"turn {len(trace.turns)}: the answer was cut off by the token budget ({gen.n_tokens} tokens){shown}"
    )
    trace.stop_detail = f"the answer was cut off by the token budget ({gen.n_tokens} tokens); raise --max-tokens"
    return _finish(q, "truncated", None)


def _finish(q: _Question, reason: str, answer: str | None) -> Trace:
    """Record how the question ended, with the counters and where the time went."""
    trace = q.trace
    trace.answer = answer
    trace.stop_reason = reason  # type: ignore[assignment]
    if not trace.stop_detail:
        trace.stop_detail = {
            "answered": f"answered after {len(trace.steps)} code step(s)",
            "answered_untagged": "the model answered without <answer> tags",
        }.get(reason, "")
    trace.counters = q.conv.counters.to_dict()
    trace.timings["total_s"] = round(time.perf_counter() - q.started, 3)
    trace.timings["model_s"] = round(sum(t.seconds for t in trace.turns), 3)
    trace.timings["sandbox_s"] = round(sum(s.duration_s for s in trace.steps), 3)
    return trace
