"""Chat formats: turn a list of messages into the exact prompt text the model was trained on.

The engine renders the WHOLE conversation after each feed and evaluates only what changed, so a
format only renders. ``ChatMLRenderer`` writes Qwen2.5-VL / Thyme's ChatML in Python;
``TemplateRenderer`` runs the GGUF's Jinja template (docs/engine.md, "Prompt formats").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from thyme_cli.engine.base import IMAGE_MARKER
from thyme_cli.engine.images import PreparedImage
from thyme_cli.errors import EngineError

Role = Literal["system", "user", "assistant"]

# What Qwen2.5-VL's template inserts when a conversation has no system message.
QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass
class Message:
    """One message; ``text`` holds one IMAGE_MARKER per entry of ``images``, in order."""

    role: Role
    text: str
    images: list[PreparedImage] = field(default_factory=list)


class Renderer(Protocol):
    """Renders a conversation to prompt text (with IMAGE_MARKERs where the images go)."""

    name: str

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str: ...


class ChatMLRenderer:
    """Qwen2.5-VL's chat template, in Python (Thyme was trained on exactly this)."""

    name = "chatml"

    def __init__(self, default_system: str | None = QWEN_DEFAULT_SYSTEM) -> None:
        self.default_system = default_system

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        parts: list[str] = []
        if self.default_system is not None and (not messages or messages[0].role != "system"):
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        for m in messages:
            parts.append(f"<|im_start|>{m.role}\n{m.text}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)


_PROBE = "thyme-probe-7f3a"
ContentStyle = Literal["string", "parts"]


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise EngineError(f"the model's chat template refused the conversation: {message}")


class TemplateRenderer:
    """The GGUF's own Jinja chat template, rendered the way Hugging Face renders it.

    Templates disagree on what ``content`` is (a string, or a list of typed parts) and on
    whether a system role exists, so the renderer probes the template once and adapts: the
    content style per role, and system text merged into the first user message when the
    template has no system role.
    """

    name = "template"

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        try:
            import jinja2
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover - jinja2 ships with llama-cpp-python
            raise EngineError("rendering this model's chat template needs jinja2", hint="pip install jinja2") from e
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise EngineError(
                f"the model's chat template does not parse: {e}",
                hint="use chat_format='chatml' if the model speaks ChatML",
            ) from e
        self._jinja_error: type[Exception] = jinja2.TemplateError
        self._globals = {"bos_token": bos_token, "eos_token": eos_token}
        user = self._require(self._probe_style("user", prefer="parts", user_style="parts"), "user")
        assistant = self._require(self._probe_style("assistant", prefer="string", user_style=user), "assistant")
        system = self._probe_style("system", prefer="string", user_style=user)
        self.styles: dict[Role, ContentStyle] = {"user": user, "assistant": assistant, "system": system or "string"}
        # Without a system role (Gemma 2, some Mistral templates) system text joins the first user turn.
        self.system_role = system is not None

    # --- probing ---------------------------------------------------------------------------

    def _try(self, raw: list[dict[str, Any]]) -> str | None:
        try:
            return self._template.render(messages=raw, add_generation_prompt=True, **self._globals)
        except Exception:
            return None

    @staticmethod
    def _content(text: str, style: ContentStyle) -> Any:
        return text if style == "string" else [{"type": "text", "text": text}]

    def _probe_style(self, role: Role, *, prefer: ContentStyle, user_style: ContentStyle) -> ContentStyle | None:
        """The content style under which the template renders this role's text verbatim."""
        other: ContentStyle = "string" if prefer == "parts" else "parts"
        for style in (prefer, other):
            probe = {"role": role, "content": self._content(_PROBE, style)}
            hi = {"role": "user", "content": self._content("hi", user_style)}
            raw = {"user": [probe], "assistant": [hi, probe], "system": [probe, hi]}[role]
            out = self._try(raw)
            # A template that prints a list of parts as a Python/JSON repr still "contains" the probe.
            if out is not None and _PROBE in out and "'type'" not in out and '"type"' not in out:
                return style
        return None

    @staticmethod
    def _require(style: ContentStyle | None, role: Role) -> ContentStyle:
        if style is None:
            raise EngineError(
                f"the model's chat template does not render plain {role} messages",
                hint="use chat_format='chatml' if the model speaks ChatML",
            )
        return style

    # --- rendering -------------------------------------------------------------------------

    def _raw(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        msgs = list(messages)
        if not self.system_role and msgs and msgs[0].role == "system":
            system, rest = msgs[0], msgs[1:]
            if rest and rest[0].role == "user":
                first = rest[0]
                merged = Message("user", f"{system.text}\n\n{first.text}", [*system.images, *first.images])
                msgs = [merged, *rest[1:]]
            else:
                msgs = [Message("user", system.text, list(system.images)), *rest]
        return [{"role": m.role, "content": self._content(m.text, self.styles[m.role])} for m in msgs]

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        try:
            return self._template.render(
                messages=self._raw(messages), add_generation_prompt=add_generation_prompt, **self._globals
            )
        except EngineError:
            raise
        except self._jinja_error as e:
            raise EngineError(f"the model's chat template failed: {e}") from e


def count_markers(text: str) -> int:
    return text.count(IMAGE_MARKER)


def check_markers(text: str, images: Sequence[object], where: str) -> None:
    """The caller's text must hold exactly one IMAGE_MARKER per image."""
    n = count_markers(text)
    if n != len(images):
        raise EngineError(
            f"{where}: the text has {n} image marker(s) for {len(images)} image(s)",
            hint=f"put one {IMAGE_MARKER} in the text where each image goes",
        )
