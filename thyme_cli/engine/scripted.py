"""A scripted engine: replays prepared model replies through the real loop, sandbox and CLI.

It stands in for a model where no real weights exist (tests, demos, `thyme replay`-style checks) and
stops, streams and checks image markers as a live engine does. The script format (a list of replies,
or replies routed by question) is in docs/engine.md ("The scripted engine").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from thyme_cli.engine.base import IMAGE_MARKER, Counters, Generation, GenerationStopReason
from thyme_cli.engine.textstream import TurnScanner
from thyme_cli.errors import EngineError, UsageError

Route = tuple[str, list[str]]


@dataclass(frozen=True)
class Script:
    replies: list[str]  # for questions no route matches
    routes: list[Route] = field(default_factory=list)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load_script(path: Path) -> Script:
    """Read a script file; one clear error for every way it can be wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"script {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"script {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"script {path} is not valid JSON: {e}") from None
    if _strings(data):
        return Script(list(data))
    if (
        not isinstance(data, dict)
        or not _strings(data.get("replies", []))
        or not isinstance(data.get("routes", []), list)
    ):
        raise UsageError(
            f"script {path}: expected a JSON list of reply strings, or an object with a 'replies' "
            "list of strings and optional 'routes'"
        )
    routes: list[Route] = []
    for n, route in enumerate(data.get("routes", []), 1):
        if not (
            isinstance(route, dict)
            and isinstance(route.get("match"), str)
            and route["match"]
            and _strings(route.get("replies"))
        ):
            raise UsageError(f"script {path}: route {n} needs a non-empty 'match' string and a 'replies' list")
        routes.append((route["match"], list(route["replies"])))
    return Script(list(data.get("replies", [])), routes)


@dataclass
class FedItem:
    """One thing fed to the conversation, kept so tests can check the exact protocol."""

    kind: str  # "system" | "user" | "assistant"
    text: str
    images: list[Path]


@dataclass
class ScriptedConversation:
    replies: list[str]
    routes: list[Route] = field(default_factory=list)
    route: str | None = None  # the match that was taken (None: the default replies)
    chunk_chars: int = 7
    fed: list[FedItem] = field(default_factory=list)
    _next: int = 0
    _counters: Counters = field(default_factory=Counters)
    _closed: bool = False
    fences: bool = False  # the generic protocol's ```python fences end a code turn (use_fences)
    _rest: str = ""  # what a reply holds after its stop: the next generate of the same turn goes on with it

    def use_fences(self, on: bool) -> None:
        self.fences = on

    def _feed(self, kind: str, text: str, images: Sequence[Path]) -> None:
        if self._closed:
            raise EngineError("conversation is closed")
        if text.count(IMAGE_MARKER) != len(images):
            raise EngineError(f"{kind} text has {text.count(IMAGE_MARKER)} image markers for {len(images)} images")
        for image in images:
            if not Path(image).is_file():
                raise EngineError(f"image {image} does not exist")
        self.fed.append(FedItem(kind, text, [Path(i) for i in images]))
        self._rest = ""  # a feed ends the generated text where it was cut
        self._counters.images_encoded += len(images)
        self._counters.tokens_evaluated += len(text)

    def feed_system(self, text: str) -> None:
        if self.fed:
            raise EngineError("the system message must come first")
        self._feed("system", text, ())

    def feed_user(self, text: str, images: Sequence[Path] = ()) -> None:
        self._feed("user", text, images)

    def feed_assistant(self, text: str, images: Sequence[Path] = ()) -> None:
        self._feed("assistant", text, images)

    def _pick_route(self) -> None:
        fed = "\n".join(item.text for item in self.fed if item.kind == "user")
        for match, replies in self.routes:
            if match in fed:
                self.replies, self.route = list(replies), match
                return

    def generate(self, *, max_tokens: int, on_text: Callable[[str], None] | None = None) -> Generation:
        if self._next == 0 and self.routes and self.route is None:
            self._pick_route()
        if self._rest:
            reply, self._rest = self._rest, ""
        elif self._next >= len(self.replies):
            return Generation(text="", stop_reason="end_of_turn", n_tokens=0)
        else:
            reply = self.replies[self._next]
            self._next += 1
        text, reason = _cut_like_an_engine(reply, max_chars=max_tokens * 4, fences=self.fences)
        if reason in ("code", "answer"):
            self._rest = reply[len(text) :]
        for start in range(0, len(text), self.chunk_chars):
            if on_text is not None:
                on_text(text[start : start + self.chunk_chars])
        n_tokens = max(1, len(text) // 4) if text else 0
        self._counters.tokens_generated += n_tokens
        self.fed.append(FedItem("generated", text, []))
        return Generation(text=text, stop_reason=reason, n_tokens=n_tokens)

    def checkpoint(self) -> int:
        """A mark to roll back to (for --on-error retry)."""
        return len(self.fed)

    def rollback(self, mark: int, *, resample_warm: bool = True) -> None:
        """Forget everything fed or generated after the mark; the next reply is the retry (a script
        has no sampler to reset, so ``resample_warm`` changes nothing)."""
        del self.fed[mark:]
        self._rest = ""

    @property
    def counters(self) -> Counters:
        return self._counters

    def close(self) -> None:
        self._closed = True


def _cut_like_an_engine(reply: str, *, max_chars: int, fences: bool = False) -> tuple[str, GenerationStopReason]:
    """Stop where the live engine's TurnScanner stops (the first ``</code>``, ``</answer>``, or
    with ``fences`` a closing Python fence); else at the end of the turn."""
    scanner = TurnScanner(fences=fences)
    text, reason = reply, "end_of_turn"
    for i, ch in enumerate(reply):
        hit = scanner.feed(ch)
        if hit is not None:
            text = reply[: i + 1]
            reason = "code" if hit == "code" else "answer"
            break
    if len(text) > max_chars:
        return text[:max_chars], "max_tokens"
    return text, cast(GenerationStopReason, reason)


class ScriptedEngine:
    """Hands out conversations that replay the same script, one question after another."""

    concurrent = True  # conversations are independent: batch --jobs may run several at once

    def __init__(self, replies: list[str], name: str = "scripted", routes: list[Route] | None = None) -> None:
        self.replies = replies
        self.routes = routes or []
        self.name = name
        self.conversations: list[ScriptedConversation] = []

    @classmethod
    def from_file(cls, path: Path) -> ScriptedEngine:
        script = load_script(path)
        return cls(script.replies, name=f"scripted:{path.name}", routes=script.routes)

    def open(self) -> ScriptedConversation:
        conversation = ScriptedConversation(list(self.replies), routes=self.routes)
        self.conversations.append(conversation)
        return conversation

    def close(self) -> None:
        for conversation in self.conversations:
            conversation.close()
