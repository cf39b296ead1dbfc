"""Scoring a run: results lines + side table -> accuracy overall and per category, tool use, timings.

Accuracy counts every finished item that has an expected answer; an item that failed (engine,
image or sandbox trouble) or whose reply names no single option counts as wrong, as in VLMEvalKit's
exact matching. Items not run yet (a shard, an interrupted run) are "pending" and reported as
coverage, never silently counted.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from thyme_cli.batch.inputs import in_shard, parse_shard
from thyme_cli.eval.extract import extract_choice, matches_free_answer
from thyme_cli.eval.store import SideTable

NO_CATEGORY = "(none)"


@dataclass
class ItemScore:
    id: str
    category: str
    l2_category: str | None
    expected: str | None
    choice: str | None  # the option letter picked, or the free answer
    rule: str  # how the choice was read (see extract.RULES), "failed" or "free"
    correct: bool
    failed: bool
    steps: int
    step_errors: int
    seconds: float


@dataclass
class Group:
    name: str
    scored: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / self.scored if self.scored else None


@dataclass
class RunScore:
    label: str
    benchmark: str
    tools: bool | None  # None: unknown (results scored against a benchmark file, no eval metadata)
    models: list[str]
    total: int  # items in the benchmark (as run: after --limit)
    done: int = 0
    overall: Group = field(default_factory=lambda: Group("overall"))
    categories: list[Group] = field(default_factory=list)
    l2_categories: list[Group] = field(default_factory=list)
    failed: int = 0
    no_choice: int = 0
    unscored: int = 0  # finished, but the benchmark gives no answer
    unknown_ids: int = 0  # result lines whose id is not in the benchmark
    with_code: int = 0
    steps: int = 0
    step_errors: int = 0
    stop_reasons: Counter[str] = field(default_factory=Counter)
    item_seconds: list[float] = field(default_factory=list)
    model_s: float = 0.0
    sandbox_s: float = 0.0
    items: list[ItemScore] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.total - self.done

    @property
    def macro(self) -> float | None:
        """The mean of the per-category accuracies (some benchmarks report this as their overall)."""
        values = [g.accuracy for g in self.categories if g.accuracy is not None]
        return sum(values) / len(values) if len(values) > 1 else None

    @property
    def code_share(self) -> float | None:
        return 100.0 * self.with_code / self.done if self.done else None

    @property
    def steps_per_item(self) -> float | None:
        return self.steps / self.done if self.done else None

    @property
    def sandbox_error_rate(self) -> float | None:
        return 100.0 * self.step_errors / self.steps if self.steps else None

    def timing(self) -> dict[str, float]:
        s = sorted(self.item_seconds)
        if not s:
            return {}
        return {
            "total_s": round(sum(s), 3),
            "mean_s": round(statistics.fmean(s), 3),
            "median_s": round(statistics.median(s), 3),
            "p90_s": round(s[min(len(s) - 1, int(0.9 * len(s)))], 3),
            "model_s": round(self.model_s, 3),
            "sandbox_s": round(self.sandbox_s, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """summary.json: everything a report or a comparison needs, without the per-item rows."""

        def group(g: Group) -> dict[str, Any]:
            return {"name": g.name, "scored": g.scored, "correct": g.correct, "accuracy": _round(g.accuracy)}

        return {
            "label": self.label,
            "benchmark": self.benchmark,
            "tools": self.tools,
            "models": self.models,
            "items": self.total,
            "done": self.done,
            "pending": self.pending,
            "scored": self.overall.scored,
            "correct": self.overall.correct,
            "accuracy": _round(self.overall.accuracy),
            "macro_accuracy": _round(self.macro),
            "failed": self.failed,
            "no_choice": self.no_choice,
            "unscored": self.unscored,
            "unknown_ids": self.unknown_ids,
            "categories": [group(g) for g in self.categories],
            "l2_categories": [group(g) for g in self.l2_categories],
            "tool_use": {
                "items_with_code": self.with_code,
                "code_share": _round(self.code_share),
                "steps": self.steps,
                "steps_per_item": _round(self.steps_per_item, 2),
                "step_errors": self.step_errors,
                "sandbox_error_rate": _round(self.sandbox_error_rate),
            },
            "stop_reasons": dict(self.stop_reasons),
            "timings": self.timing(),
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def score_item(record: dict[str, Any], side: dict[str, Any]) -> ItemScore:
    """One result line against its benchmark entry."""
    options: dict[str, str] = side.get("options") or {}
    expected = side.get("answer")
    steps = record.get("steps") or []
    step_errors = sum(1 for s in steps if s.get("error") or s.get("timed_out"))
    failed = bool(record.get("error"))
    if failed:
        choice, rule, correct = None, "failed", False
    elif options:
        picked = extract_choice(record.get("answer"), options)
        choice, rule, correct = picked.letter, picked.rule, picked.letter is not None and picked.letter == expected
    else:
        choice, rule = record.get("answer"), "free"
        correct = expected is not None and matches_free_answer(record.get("answer"), str(expected))
    return ItemScore(
        id=str(record["id"]),
        category=side.get("category") or NO_CATEGORY,
        l2_category=side.get("l2_category"),
        expected=expected,
        choice=choice,
        rule=rule,
        correct=correct,
        failed=failed,
        steps=len(steps),
        step_errors=step_errors,
        seconds=float((record.get("timings") or {}).get("item_s") or 0.0),
    )


def score_run(records: list[dict[str, Any]], side: SideTable, label: str | None = None) -> RunScore:
    """Aggregate a run. Duplicate ids (overlapping shards) count once: the first line wins."""
    models = Counter(str(r.get("model")) for r in records if r.get("model"))
    run = RunScore(
        label=label or _label(side.meta, models),
        benchmark=str(side.meta.get("benchmark_name", "?")),
        tools=side.meta.get("tools"),
        models=[m for m, _ in models.most_common()],
        total=_expected_items(side),
    )
    categories: dict[str, Group] = {}
    l2: dict[str, Group] = {}
    for entry in side.items.values():  # groups in benchmark order
        categories.setdefault(entry.get("category") or NO_CATEGORY, Group(entry.get("category") or NO_CATEGORY))
        if entry.get("l2_category"):
            l2.setdefault(entry["l2_category"], Group(entry["l2_category"]))
    seen: set[str] = set()
    for record in records:
        item_id = str(record["id"])
        if item_id in seen:
            continue
        seen.add(item_id)
        found = side.items.get(item_id)
        if found is None:
            run.unknown_ids += 1
            continue
        _add(run, record, score_item(record, found), categories, l2)
    run.categories = (
        [g for g in categories.values() if g.scored] if len(categories) > 1 or NO_CATEGORY not in categories else []
    )
    run.l2_categories = [g for g in l2.values() if g.scored]
    return run


def _expected_items(side: SideTable) -> int:
    """How many items this run is meant to cover: the whole benchmark, or the ids of its shard."""
    shard = side.meta.get("shard")
    if not shard:
        return len(side.items)
    index, total = parse_shard(str(shard))
    return sum(1 for item_id in side.items if in_shard(item_id, index, total))


def _add(
    run: RunScore, record: dict[str, Any], item: ItemScore, categories: dict[str, Group], l2: dict[str, Group]
) -> None:
    run.items.append(item)
    run.done += 1
    run.stop_reasons[str(record.get("stop_reason"))] += 1
    run.failed += item.failed
    run.with_code += item.steps > 0
    run.steps += item.steps
    run.step_errors += item.step_errors
    run.item_seconds.append(item.seconds)
    timings = record.get("timings") or {}
    run.model_s += float(timings.get("model_s") or 0.0)
    run.sandbox_s += float(timings.get("sandbox_s") or 0.0)
    if item.expected is None:
        run.unscored += 1
        return
    if not item.failed and item.rule not in ("free",) and item.choice is None:
        run.no_choice += 1
    for group in (run.overall, categories[item.category], l2.get(item.l2_category or "")):
        if group is not None:
            group.scored += 1
            group.correct += item.correct


def _label(meta: dict[str, Any], models: Counter[str]) -> str:
    model = models.most_common(1)[0][0] if models else str(meta.get("model") or "model")
    if meta.get("tools") is None:
        return model
    return f"{model} ({'tools' if meta['tools'] else 'no tools'})"


def item_rows(run: RunScore) -> list[dict[str, Any]]:
    return [asdict(item) for item in run.items]
