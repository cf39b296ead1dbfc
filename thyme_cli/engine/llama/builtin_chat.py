"""llama.cpp's own built-in chat formats ("gemma", "chatml", "llama3", ...), for GGUFs that carry
no chat template: ``--chat-format NAME`` or ``chat_format = "NAME"`` in a user model entry.

Rendering goes through ``llama_chat_apply_template`` with the format's name, so the text is the
one llama.cpp itself would build (images stay as IMAGE_MARKERs: they are plain text to it).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from thyme_cli.engine.llama.chat import Message
from thyme_cli.errors import EngineError, UsageError


def builtin_formats() -> list[str]:
    """The names llama.cpp's llama_chat_apply_template knows, as this build reports them."""
    import llama_cpp

    n = llama_cpp.llama_chat_builtin_templates((ctypes.c_char_p * 1)(), 0)
    names = (ctypes.c_char_p * max(n, 1))()
    n = llama_cpp.llama_chat_builtin_templates(names, n)
    return sorted(name.decode() for name in names[:n] if name)


def check_format(name: str) -> None:
    known = builtin_formats()
    if name not in known:
        raise UsageError(
            f"unknown chat format {name!r}",
            hint="one of: auto, template, " + ", ".join(known) + "; or --chat-template FILE",
        )


class BuiltinRenderer:
    """Renders a conversation with one of llama.cpp's built-in chat formats."""

    def __init__(self, format_name: str) -> None:
        check_format(format_name)
        self.name = f"builtin:{format_name}"
        self.format_name = format_name

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        import llama_cpp

        if not messages:
            return ""
        keep = [(m.role.encode(), m.text.encode()) for m in messages]
        chat = (llama_cpp.llama_chat_message * len(keep))(*(llama_cpp.llama_chat_message(r, t) for r, t in keep))
        size = 2 * sum(len(t) + len(r) for r, t in keep) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(
                self.format_name.encode(), chat, len(keep), add_generation_prompt, buf, size
            )
            if n < 0:
                raise EngineError(f"llama.cpp could not render chat format {self.format_name!r}")
            if n <= size:
                return buf.raw[:n].decode("utf-8", "replace")
            size = n + 1
        raise EngineError(f"chat format {self.format_name!r} rendered an unexpectedly long prompt")
