"""What the agent loop needs from a model: a live conversation it can feed and sample from.

A ``Conversation`` holds ONE question's context. ``feed_*`` methods append to it and must evaluate
only the new suffix (never re-encode earlier images or re-evaluate earlier text); ``generate``
continues the current assistant turn until a stop condition and says which one it hit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# Placed in fed text wherever an image goes (one marker per image, in order). It is libmtmd's
# default media marker, so the llama.cpp engine can pass text through unchanged.
IMAGE_MARKER = "<__media__>"

# Stop strings of the Thyme protocol: a finished code block and a finished answer.
CODE_END = "</code>"
ANSWER_END = "</answer>"
CODE_START = "<code>"

GenerationStopReason = Literal["code", "answer", "end_of_turn", "max_tokens"]


@dataclass
class Generation:
    """One call to ``generate``: the text produced (stop string included) and why it stopped."""

    text: str
    stop_reason: GenerationStopReason
    n_tokens: int


@dataclass
class Counters:
    """Work done for one question; shown by --verbose and stored in the trace."""

    tokens_evaluated: int = 0  # prompt/suffix tokens run through the model (image tokens included)
    tokens_generated: int = 0
    images_encoded: int = 0
    image_encode_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.tokens_generated / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_tokens_per_s"] = round(self.decode_tokens_per_s, 2)
        return d


class Conversation(Protocol):
    """One question's live context."""

    def feed_system(self, text: str) -> None:
        """Start the conversation with a system message (only as the first feed)."""

    def feed_user(self, text: str, images: Sequence[Path] = ()) -> None:
        """Close any open assistant turn, add a user turn, and open the next assistant turn.

        ``text`` holds one IMAGE_MARKER per entry of ``images``, where each image goes.
        """

    def feed_assistant(self, text: str, images: Sequence[Path] = ()) -> None:
        """Append text (and images) inside the current assistant turn, e.g. Thyme's
        ``<sandbox_output>`` observation, so the next ``generate`` continues that same turn."""

    def generate(
        self,
        *,
        max_tokens: int,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Continue the assistant turn until ``</code>``, ``</answer>``, end of turn or max_tokens.

        Inside a code block (after ``<code>``, before ``</code>``) decoding is greedy whatever the
        temperature (adaptive temperature sampling). Text goes to ``on_text`` as it is produced.
        """
        ...

    def checkpoint(self) -> int:
        """A mark to come back to: the conversation as it is now (for --on-error retry)."""
        ...

    def rollback(self, mark: int, *, resample_warm: bool = True) -> None:
        """Drop everything fed or generated since ``checkpoint`` returned ``mark``. With
        ``resample_warm`` a greedy conversation may sample the next turn's prose warm, so the retried
        turn is not a copy of the failed one (engines without a local sampler ignore it)."""
        ...

    @property
    def counters(self) -> Counters: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """A loaded model that opens conversations."""

    name: str
    concurrent: bool  # True when several conversations may run at once (batch --jobs)

    def open(self) -> Conversation: ...

    def close(self) -> None: ...
