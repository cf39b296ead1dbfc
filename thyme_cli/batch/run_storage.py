"""What a batch run directory keeps on disk: for `batch`/`eval --keep-images`, only the step images
asked for (an unchanged input is linked, not copied: question/input_image.py `link_or_copy`).

A batch of 10,000 photos would otherwise hold a second copy of every photo and every crop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thyme_cli.question.trace import Trace

KEEP_CHOICES = ("all", "final", "none")


def prune_step_images(trace: Trace, run_dir: Path, keep: str) -> int:
    """Delete the step images `keep` does not ask for and drop them from the trace (which the
    caller writes again); returns how many were deleted. `final` keeps the images of the last
    step that made any; `none` keeps no step image."""
    if keep == "all":
        return 0
    with_images = [s for s in trace.steps if s.images]
    kept = {id(with_images[-1])} if keep == "final" and with_images else set()
    removed = 0
    for step in with_images:
        if id(step) in kept:
            continue
        for rel in step.images:
            path = run_dir / rel
            if path.resolve().is_relative_to(run_dir.resolve()):  # only files thyme wrote in the run dir
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        step.images = []
    if removed:
        trace.notes.append(f"--keep-images {keep}: {removed} step image(s) not kept")
    return removed
