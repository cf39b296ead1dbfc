"""How each question runs (sandbox, timeouts, the loop's options, --samples): set once per command."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thyme_cli.defaults import SAMPLES, STEP_TIMEOUT_S
from thyme_cli.question.loop import AgentOptions

if TYPE_CHECKING:
    from thyme_cli.sandbox.host.limits import Limits


@dataclass
class QuestionSettings:
    sandbox: str = "auto"
    step_timeout_s: float = STEP_TIMEOUT_S
    limits: Limits | None = None  # sandbox limits (None: the defaults)
    keep_images: str = "all"  # batch/eval: which step images a run dir keeps (run_storage.KEEP_CHOICES)
    agent: AgentOptions = field(default_factory=AgentOptions)
    samples: int = SAMPLES  # --samples: trajectories per question, answer by vote (thyme_cli/question/samples.py)
