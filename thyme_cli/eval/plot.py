"""The comparison plot: accuracy per category, one bar per run (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

from thyme_cli.eval.score import Group, RunScore

MAX_CATEGORIES = 40  # beyond this the bars are unreadable; the table still has them all


def plot_runs(runs: list[RunScore], path: Path, title: str) -> Path:
    """Grouped bars: "overall" then each category; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["overall"]
    for run in runs:
        names += [g.name for g in run.categories if g.name not in names]
    names = names[: MAX_CATEGORIES + 1]
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(names) * max(1, len(runs)) * 0.6), 4.5), dpi=110)
    for k, run in enumerate(runs):
        groups = {"overall": run.overall, **{g.name: g for g in run.categories}}
        values = [_accuracy(groups, n) for n in names]
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=run.label)
        ax.bar_label(bars, labels=["–" if v is None else f"{v:.0f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(
        range(len(names)), names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 120)  # room above the 100% bars for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(runs), 3), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _accuracy(groups: dict[str, Group], name: str) -> float | None:
    group = groups.get(name)
    return group.accuracy if group is not None else None
