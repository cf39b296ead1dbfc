"""`--samples N`: N trajectories of one question from one shared prefix, and a vote on their answers.

Each trajectory is a whole Thyme run (its own conversation, sampler seed, sandbox worker and
run directory under ``RUN/samples/sK``). With the local engine they are sequences of one
llama.cpp context: the first trajectory evaluates the system prompt and the image, the others
start once that prefix is published and copy its KV cells, and all of them decode together.
Prose is sampled at the question's temperature (code stays greedy, as always). The answer is
the majority of the normalised answers (the option letter when an answer names one), ties
broken by the higher mean token log-probability; the main trace is the winning trajectory's,
with every trajectory and the votes added.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli.errors import ThymeError
from thyme_cli.question.answers import answer_body, normalize
from thyme_cli.question.loop import AgentEvents, QuietEvents
from thyme_cli.question.trace import Trace, write_trace

if TYPE_CHECKING:
    from thyme_cli.question.settings import QuestionSettings

# Runs one trajectory: (run dir, settings, events, sampling=...) -> its trace.
Trajectory = Callable[..., Trace]

# "B", "(B)", "B.", "B) some text", "B: some text", "Option B", "Answer: (B)".
_LETTER_RE = re.compile(
    r"^(?:(?:the\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*)?\(?([A-Ha-h])\)?(?:[.):]\s.*|[.):]?)$",
    re.IGNORECASE | re.DOTALL,
)


def vote_key(answer: str | None) -> str | None:
    """What votes are counted on: an option letter (upper case) when the answer names one, else
    the answer's words in lower case; None for no answer."""
    if answer is None:
        return None
    body = answer_body(answer) or answer.strip()
    m = _LETTER_RE.match(body.strip())
    if m:
        return m.group(1).upper()
    return normalize(body) or None


@dataclass
class Vote:
    winner: int | None  # index of the trajectory whose trace is the answer's
    votes: dict[str, int]
    keys: list[str | None]


def vote(answers: list[str | None], mean_logprobs: list[float | None]) -> Vote:
    """Majority of the normalised answers; a tie goes to the answer whose trajectories have the
    higher mean token log-probability (then to the one given first)."""
    keys = [vote_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return Vote(None, {}, keys)

    def strength(key: str) -> float:
        lps = [lp for k, lp in zip(keys, mean_logprobs, strict=True) if k == key and lp is not None]
        return sum(lps) / len(lps) if lps else float("-inf")

    best = max(counts.values())
    tied = [k for k in dict.fromkeys(k for k in keys if k is not None) if counts[k] == best]
    win = max(tied, key=strength)  # max keeps the first of equals
    members = [i for i, k in enumerate(keys) if k == win]

    def own(i: int) -> float:
        lp = mean_logprobs[i]
        return lp if lp is not None else float("-inf")

    winner = max(members, key=own)
    return Vote(winner, dict(counts), keys)


def _mean_logprob(trace: Trace) -> float | None:
    n = trace.counters.get("logprob_tokens") or 0
    return trace.counters.get("logprob_sum", 0.0) / n if n else None


def ask_samples(
    engine: Any, trajectory: Trajectory, run_dir: Path, settings: QuestionSettings, events: AgentEvents
) -> Trace:
    """Run ``settings.samples`` trajectories (seeds seed, seed+1, ...) and return the voted trace (written
    to run_dir). ``trajectory`` runs one of them (question/assemble.py passes its ask_one for this question)."""
    n = settings.samples
    dirs = [run_dir / "samples" / f"s{k + 1}" for k in range(n)]
    events.note(f"sampling {n} trajectories")
    traces, errors = _run_trajectories(engine, trajectory, dirs, replace(settings, samples=1))
    if not any(t is not None for t in traces):
        raise ThymeError(f"every sampled trajectory failed: {errors[0]}")
    lps = [_mean_logprob(t) if t is not None else None for t in traces]
    result = vote([t.answer if t is not None else None for t in traces], lps)
    w = result.winner if result.winner is not None else next(i for i, t in enumerate(traces) if t is not None)
    main = _winning_trace(traces[w], w, run_dir)
    main.samples = [_summary(k, traces[k], errors[k], result.keys[k], lps[k], dirs[k], run_dir) for k in range(n)]
    main.votes = result.votes
    main.notes = [*main.notes, f"answer voted among {n} sampled trajectories (trajectory {w + 1} shown)"]
    write_trace(main, run_dir)
    return main


def _run_trajectories(
    engine: Any, trajectory: Trajectory, dirs: list[Path], single: QuestionSettings
) -> tuple[list[Trace | None], list[str | None]]:
    """Run one trajectory per directory, together; each one's trace, or the error that ended it."""
    from thyme_cli.engine.settings import SamplingOptions

    # A seed per trajectory where the engine's open() takes sampling options (the local engine).
    takes = "sampling" in inspect.signature(engine.open).parameters
    base = getattr(engine, "sampling", None) if takes else None
    seed = getattr(getattr(engine, "sampling", None), "seed", 0)
    traces: list[Trace | None] = [None] * len(dirs)
    errors: list[str | None] = [None] * len(dirs)

    def one(k: int) -> None:
        dirs[k].mkdir(parents=True, exist_ok=True)
        sampling = replace(base, seed=seed + k) if isinstance(base, SamplingOptions) else None
        try:
            traces[k] = trajectory(dirs[k], single, QuietEvents(), sampling=sampling)
        except ThymeError as e:
            errors[k] = e.message
        except Exception as e:  # one broken trajectory must not lose the others
            errors[k] = f"unexpected {type(e).__name__}: {e}"

    _run_after_first_prefix(engine, one, len(dirs))
    return traces, errors


def _run_after_first_prefix(engine: Any, one: Callable[[int], None], n: int) -> None:
    """Start trajectory 0, then the others once its system prompt and image are published (they copy them)."""
    ready: threading.Event | None = getattr(engine, "prefix_ready", None)
    if ready is not None:
        ready.clear()
    first = threading.Thread(target=one, args=(0,), name="thyme-sample-1")
    first.start()
    if ready is not None:
        while first.is_alive() and not ready.wait(0.05):
            pass
    rest = [threading.Thread(target=one, args=(k,), name=f"thyme-sample-{k + 1}") for k in range(1, n)]
    for t in rest:
        t.start()
    for t in [first, *rest]:
        t.join()


def _winning_trace(chosen: Trace | None, w: int, run_dir: Path) -> Trace:
    """The winner's trace as the question's own: its image paths made relative to the main run dir."""
    assert chosen is not None
    prefix = f"samples/s{w + 1}/"
    steps = [replace(s, images=[prefix + p for p in s.images]) for s in chosen.steps]
    image = chosen.image if (run_dir / chosen.image).exists() else prefix + chosen.image
    return replace(chosen, steps=steps, image=image)


def _summary(
    k: int, trace: Trace | None, error: str | None, key: str | None, lp: float | None, directory: Path, run_dir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": k + 1,
        "run_dir": str(directory.relative_to(run_dir)),
        "vote": key,
        "mean_logprob": lp,
        "error": error,
    }
    if trace is not None:
        out.update(
            answer=trace.answer,
            stop_reason=trace.stop_reason,
            steps=len(trace.steps),
            turns=[t.text for t in trace.turns],
            tokens=trace.counters.get("tokens_generated"),
        )
    return out
