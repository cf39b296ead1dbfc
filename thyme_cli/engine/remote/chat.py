"""One question's conversation with a remote server: the history lives here, the server is stateless.

Every ``generate`` sends the whole (append-only) history, so the server's prefix cache keeps a turn
linear in cost; adaptive temperature sampling takes two requests per code step, and stop strings are
found here in the stream (docs/remote.md, "How the protocol maps onto the chat API").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thyme_cli.defaults import SEED, TEMPERATURE, TOP_K, TOP_P
from thyme_cli.engine.base import (
    ANSWER_END,
    CODE_END,
    CODE_START,
    IMAGE_MARKER,
    Counters,
    Generation,
    GenerationStopReason,
)
from thyme_cli.engine.remote.http import RemoteClient, Retryable
from thyme_cli.engine.remote.images import image_data_uri
from thyme_cli.engine.remote.probe import CONTINUE_FLAGS, ServerCaps
from thyme_cli.engine.textstream import without_observations
from thyme_cli.errors import EngineError

PROSE_STOPS = (CODE_START, CODE_END, ANSWER_END)
CODE_STOPS = (CODE_END, ANSWER_END)
_REASONS: dict[str, GenerationStopReason] = {CODE_END: "code", ANSWER_END: "answer"}
# Request fields the protocol owns: THYME_API_EXTRA_BODY cannot change them.
_PROTOCOL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "temperature",
        "continue_final_message",
        "add_generation_prompt",
        "n",
        "stop",
    }
)


@dataclass(frozen=True)
class RemoteSampling:
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    top_k: int = TOP_K
    seed: int = SEED
    max_image_tokens: int | None = None


@dataclass
class _Entry:
    role: str  # "system" | "user" | "assistant"
    parts: list[dict[str, Any]]


@dataclass
class _Segment:
    """What one streamed request produced, cut right after the first stop string."""

    carry: str  # the end of the reply so far, so a stop string split across requests is still found
    text: str = ""
    hit: str | None = None
    finish: str | None = None
    chunks: int = 0  # streamed pieces with text: one token each on most servers, several on a busy one
    usage: dict[str, Any] | None = None

    @property
    def n_tokens(self) -> int:
        """Tokens generated, as the server counts them when it says (vLLM does in every chunk with
        ``continuous_usage_stats``, others in the last one); else the streamed pieces."""
        done = (self.usage or {}).get("completion_tokens")
        return done if isinstance(done, int) and done >= 0 else self.chunks

    def add(self, piece: str, stops: Sequence[str]) -> str:
        """Take new text; return the part to show (nothing past a stop string)."""
        before = len(self.carry) + len(self.text)
        window = self.carry + self.text + piece
        found = [(i, s) for s in stops if (i := window.find(s, max(0, before - len(s) + 1))) >= 0]
        if not found:
            self.text += piece
            return piece
        index, stop = min(found)
        keep = index + len(stop) - before
        self.hit = stop
        self.text += piece[:keep]
        return piece[:keep]


class _Interrupted(Exception):
    def __init__(self, error: Retryable, segment: _Segment) -> None:
        super().__init__(error.reason)
        self.error = error
        self.segment = segment


@dataclass
class RemoteConversation:
    client: RemoteClient
    model: str
    caps: ServerCaps
    sampling: RemoteSampling
    extra_body: dict[str, Any] = field(default_factory=dict)
    _log: list[_Entry] = field(default_factory=list)
    _counters: Counters = field(default_factory=Counters)
    _closed: bool = False

    # -- feeding -------------------------------------------------------------------------------------

    def feed_system(self, text: str) -> None:
        if self._log:
            raise EngineError("the system message must come first")
        self._feed("system", text, ())

    def feed_user(self, text: str, images: Sequence[Path] = ()) -> None:
        self._feed("user", text, images)

    def feed_assistant(self, text: str, images: Sequence[Path] = ()) -> None:
        """In the open assistant turn when the server can continue it; else as a user turn."""
        in_turn = self.caps.continues and (not images or self.caps.assistant_images)
        self._feed("assistant" if in_turn else "user", text, images)

    def _feed(self, role: str, text: str, images: Sequence[Path]) -> None:
        if self._closed:
            raise EngineError("conversation is closed")
        if text.count(IMAGE_MARKER) != len(images):
            raise EngineError(f"{role} text has {text.count(IMAGE_MARKER)} image markers for {len(images)} images")
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(text.split(IMAGE_MARKER)):
            if piece:
                parts.append({"type": "text", "text": piece})
            if i < len(images):
                uri = image_data_uri(Path(images[i]), max_tokens=self.sampling.max_image_tokens)
                parts.append({"type": "image_url", "image_url": {"url": uri}})
        self._log.append(_Entry(role, parts))
        self._counters.images_encoded += len(images)

    # -- generating ----------------------------------------------------------------------------------

    def generate(self, *, max_tokens: int, on_text: Callable[[str], None] | None = None) -> Generation:
        if self._closed:
            raise EngineError("conversation is closed")
        split = self.caps.continues and self.sampling.temperature > 0
        in_code = split and _inside_code(self._open_assistant_text())
        produced, used = "", 0
        retries = self.client.retry_state()
        while True:
            if used >= max_tokens:
                return self._done(produced, "max_tokens", used)
            if split:
                temperature = 0.0 if in_code else self.sampling.temperature
                stops = CODE_STOPS if in_code else PROSE_STOPS
            else:
                temperature, stops = self.sampling.temperature, CODE_STOPS
            try:
                seg = self._segment(produced, temperature, stops, max_tokens - used, on_text)
            except _Interrupted as e:
                if self.caps.continues:  # what was shown stays: the next request continues from it
                    produced, used = produced + e.segment.text, used + e.segment.n_tokens
                else:
                    produced, used = "", 0
                self.client.wait(retries, e.error)
                continue
            produced, used = produced + seg.text, used + seg.n_tokens
            if seg.hit == CODE_START:
                in_code = True
                continue
            if seg.hit is not None:
                return self._done(produced, _REASONS[seg.hit], used)
            return self._done(produced, "max_tokens" if seg.finish == "length" else "end_of_turn", used)

    def _done(self, text: str, reason: GenerationStopReason, n_tokens: int) -> Generation:
        if text:
            self._log.append(_Entry("assistant", [{"type": "text", "text": text}]))
        return Generation(text=text, stop_reason=reason, n_tokens=n_tokens)

    def _segment(
        self,
        produced: str,
        temperature: float,
        stops: Sequence[str],
        budget: int,
        on_text: Callable[[str], None] | None,
    ) -> _Segment:
        messages = self._messages(produced)
        body = self._body(messages, temperature, budget)
        seg = _Segment(carry=(self._open_assistant_text() + produced)[-max(map(len, stops)) :])
        started = time.perf_counter()
        first: float | None = None
        stream = self.client.stream_chat(body)
        try:
            for piece in stream:
                seg.usage = piece.usage or seg.usage
                seg.finish = piece.finish_reason or seg.finish
                if piece.text:
                    first = first or time.perf_counter()
                    seg.chunks += 1
                    shown = seg.add(piece.text, stops)
                    if on_text is not None and shown:
                        on_text(shown)
                    if seg.hit is not None:
                        break  # closing the stream below aborts the rest of this request
        except Retryable as e:
            raise _Interrupted(e, seg) from None
        finally:
            stream.close()
            self._count(seg, started, first)
        return seg

    def _count(self, seg: _Segment, started: float, first: float | None) -> None:
        ended = time.perf_counter()
        c = self._counters
        usage = seg.usage or {}
        if isinstance(usage.get("prompt_tokens"), int):
            c.tokens_evaluated += usage["prompt_tokens"]
        c.tokens_generated += seg.n_tokens
        c.prefill_s += (first or ended) - started
        c.decode_s += ended - (first or ended)

    def _body(self, messages: list[dict[str, Any]], temperature: float, budget: int) -> dict[str, Any]:
        sampling: dict[str, Any] = {}
        if temperature > 0:  # top_k 0 means "off" here; -1 says so to vLLM, SGLang and llama.cpp alike
            sampling = {"top_p": self.sampling.top_p, "top_k": self.sampling.top_k or -1, "seed": self.sampling.seed}
        extra = {k: v for k, v in self.extra_body.items() if k not in _PROTOCOL_FIELDS}
        body: dict[str, Any] = {
            **sampling,
            **extra,
            "model": self.model,
            "messages": messages,
            "max_tokens": budget,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if messages and messages[-1]["role"] == "assistant":
            body.update(CONTINUE_FLAGS)
        return body

    # -- history -------------------------------------------------------------------------------------

    def _open_assistant_text(self) -> str:
        """The text of the assistant turn in progress (what the model is continuing)."""
        text = ""
        for entry in reversed(self._log):
            if entry.role != "assistant":
                break
            text = "".join(p.get("text", "") for p in entry.parts) + text
        return text

    def _messages(self, produced: str) -> list[dict[str, Any]]:
        """The history as chat messages; consecutive entries of one role become one message."""
        entries = [*self._log, _Entry("assistant", [{"type": "text", "text": produced}])] if produced else self._log
        merged: list[_Entry] = []
        for entry in entries:
            if merged and merged[-1].role == entry.role and entry.role != "system":
                merged[-1] = _Entry(entry.role, merged[-1].parts + entry.parts)
            else:
                merged.append(_Entry(entry.role, list(entry.parts)))
        return [_message(e) for e in merged]

    # -- the rest of the protocol --------------------------------------------------------------------

    def checkpoint(self) -> int:
        """A mark to roll back to (for --on-error retry): the history is ours, so this is a length."""
        return len(self._log)

    def rollback(self, mark: int, *, resample_warm: bool = True) -> None:
        """Forget the history after the mark (the server samples: ``resample_warm`` changes nothing)."""
        del self._log[mark:]

    @property
    def counters(self) -> Counters:
        return self._counters

    def close(self) -> None:
        self._closed = True
        self._log.clear()


def _message(entry: _Entry) -> dict[str, Any]:
    """One chat message: plain text when it has no image, else OpenAI content parts (text joined)."""
    parts: list[dict[str, Any]] = []
    for part in entry.parts:
        if part["type"] == "text" and parts and parts[-1]["type"] == "text":
            parts[-1] = {"type": "text", "text": parts[-1]["text"] + part["text"]}
        else:
            parts.append(part)
    if all(p["type"] == "text" for p in parts):
        return {"role": entry.role, "content": "".join(p["text"] for p in parts)}
    return {"role": entry.role, "content": parts}


def _inside_code(text: str) -> bool:
    """Whether the model's own text leaves a code block open (sandbox outputs are not its text)."""
    text = without_observations(text)
    return text.rfind(CODE_START) > text.rfind(CODE_END)
