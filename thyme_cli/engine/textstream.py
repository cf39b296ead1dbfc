"""Incremental text bookkeeping for the decode loop: O(piece) work per token, never O(turn).

``TurnScanner`` follows one assistant turn as text arrives (fed or generated) and knows, after
every piece, whether decoding is inside a ``<code>`` block (adaptive temperature sampling) and
whether a stop string (``</code>``, ``</answer>``) has just been completed. Strings split across
pieces are found because a short tail of the previous text is kept.
"""

from __future__ import annotations

import codecs
import re
from typing import Literal

from thyme_cli.engine.base import ANSWER_END, CODE_END, CODE_START

StopHit = Literal["code", "answer"]
_NEEDLES: tuple[tuple[str, str], ...] = ((CODE_START, "open"), (CODE_END, "code"), (ANSWER_END, "answer"))
_KEEP = max(len(n) for n, _ in _NEEDLES) - 1
_OBSERVATION_RE = re.compile(r"<sandbox_output>[\s\S]*?</sandbox_output>", re.IGNORECASE)


def without_observations(text: str) -> str:
    """TEXT less its ``<sandbox_output>`` blocks: a ``<code>`` that a code step printed is not the
    model opening a code block (it must not switch adaptive temperature sampling to greedy)."""
    return _OBSERVATION_RE.sub("", text) if "<" in text else text


class TurnScanner:
    """Code-block state and stop strings of one assistant turn, updated piece by piece."""

    __slots__ = ("_tail", "in_code")

    def __init__(self) -> None:
        self._tail = ""
        self.in_code = False

    def reset(self) -> None:
        """A new assistant turn starts: outside code, nothing seen."""
        self._tail = ""
        self.in_code = False

    def feed(self, piece: str) -> StopHit | None:
        """Account for ``piece``; return the first stop string it completes, if any.

        Only occurrences that END inside ``piece`` count (earlier ones were reported already),
        so a stop string straddling the previous text and this piece is found exactly once.
        """
        if not piece:
            return None
        window = self._tail + piece
        start_min = len(self._tail)
        self._tail = window[-_KEEP:]
        if "<" not in window:
            return None
        hits: list[tuple[int, str]] = []
        for needle, kind in _NEEDLES:
            i = window.find(needle)
            while i != -1:
                end = i + len(needle)
                if end > start_min:
                    hits.append((end, kind))
                i = window.find(needle, i + 1)
        if not hits:
            return None
        hits.sort()
        first: StopHit | None = None
        for _end, kind in hits:
            if kind == "open":
                self.in_code = True
            else:
                self.in_code = False
                if first is None:
                    first = "code" if kind == "code" else "answer"
        return first


class Utf8Pieces:
    """Turns token byte pieces into text, holding back a multi-byte character split across tokens."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    @property
    def pending(self) -> bool:
        """True while the last piece ended inside a multi-byte character."""
        return bool(self._decoder.getstate()[0])

    def flush(self) -> str:
        """End of the turn's text: an unfinished character becomes U+FFFD."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
