"""Incremental text bookkeeping for the decode loop: O(piece) work per token, never O(turn).

``TurnScanner`` follows one assistant turn as text arrives (fed or generated) and knows, after
every piece, whether decoding is inside a ``<code>`` block (adaptive temperature sampling) and
whether a stop string (``</code>``, ``</answer>``) has just been completed. Strings split across
pieces are found because a short tail of the previous text is kept.
"""

from __future__ import annotations

import codecs
from typing import Literal

from thyme_cli.engine.base import ANSWER_END, CODE_END, CODE_START

StopHit = Literal["code", "answer"]
_NEEDLES: tuple[tuple[str, str], ...] = ((CODE_START, "open"), (CODE_END, "code"), (ANSWER_END, "answer"))
_KEEP = max(len(n) for n, _ in _NEEDLES) - 1


# States of a Markdown fence (followed only when ``TurnScanner.fences`` is on).
_NO_FENCE, _FENCE_LANG, _FENCE_PY, _FENCE_OTHER = 0, 1, 2, 3
_PY_LANGS = frozenset({"python", "py", "python3"})


class TurnScanner:
    """Code-block state and stop strings of one assistant turn, updated piece by piece.

    With ``fences`` on (the generic protocol, whose models often write a bare ```python fence
    instead of ``<code>``), a ```python / ```py fence outside ``<code>`` is code too: decoding
    inside it is "in code" (adaptive temperature sampling) and its closing ``` is a "code" stop,
    as ``</code>`` is. Fences inside ``<code>`` (Thyme's own format) change nothing.
    """

    __slots__ = ("_fence", "_lang", "_tag_code", "_tail", "_ticks", "fences", "in_code")

    def __init__(self, *, fences: bool = False) -> None:
        self.fences = fences
        self.reset()

    def reset(self) -> None:
        """A new assistant turn starts: outside code, nothing seen."""
        self._tail = ""
        self._tag_code = False
        self.in_code = False
        self._fence = _NO_FENCE
        self._ticks = 0
        self._lang = ""

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
        hit = self._tags(window, start_min) if "<" in window else None
        if self.fences and hit is None and not self._tag_code and self._fence_chars(piece):
            hit = "code"
        self.in_code = self._tag_code or self._fence == _FENCE_PY
        return hit

    def _fence_chars(self, piece: str) -> bool:
        """Follow ``` fences through ``piece``; True when a Python fence has just been closed."""
        if "`" not in piece and self._fence != _FENCE_LANG and not self._ticks:
            return False
        for ch in piece:
            if ch == "`":
                self._ticks += 1
                if self._ticks == 3 and self._fence in (_FENCE_PY, _FENCE_OTHER):
                    closed_code = self._fence == _FENCE_PY
                    self._fence, self._ticks = _NO_FENCE, -1  # -1: the rest of this run of ticks is not a fence
                    if closed_code:
                        return True
                continue
            if self._ticks >= 3 and self._fence == _NO_FENCE:
                self._fence, self._lang = _FENCE_LANG, ""
            self._ticks = 0
            if self._fence == _FENCE_LANG:
                if ch == "\n":
                    self._fence = _FENCE_PY if self._lang.strip().lower() in _PY_LANGS else _FENCE_OTHER
                elif len(self._lang) < 32:
                    self._lang += ch
        return False

    def _tags(self, window: str, start_min: int) -> StopHit | None:
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
                self._tag_code = True
                self._fence = _NO_FENCE
            else:
                self._tag_code = False
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
