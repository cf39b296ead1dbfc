"""What the agent loop needs from a sandbox: run one code step, keep state for the next one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class ExecResult:
    """The outcome of one code step, as the host safely read it."""

    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # the last lines of the traceback, when the code raised
    images: list[Path] = field(default_factory=list)  # host-side, re-encoded copies of new images
    timed_out: bool = False
    duration_s: float = 0.0
    step: int = 0  # 1-based number of the step within the question
    restarted: bool = False  # the worker was replaced after this step: earlier variables are gone
    crops: list[dict[str, Any]] = field(default_factory=list)  # boxes of the input image the code cropped
    notes: list[str] = field(default_factory=list)  # images the host left out (budgets): the model is told

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


class Sandbox(Protocol):
    """One question's warm jailed worker: variables persist between steps of the same question."""

    backend: str  # the backend really used: "nsjail", "bwrap" or "none"
    image_path: str  # the input image's path as the model's code sees it (stated in the prompt)

    def run(self, code: str) -> ExecResult: ...

    def close(self) -> None: ...
