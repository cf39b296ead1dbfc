"""What the server is and what it can do, asked once when the engine loads.

Whether it continues a partial assistant message, and whether it takes (and counts) images inside
one, is measured with one-token requests rather than trusted from its name (docs/remote.md,
"What the server is asked at start").
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from thyme_cli.engine.remote.http import RemoteClient, Retryable
from thyme_cli.errors import EngineError, UsageError

CONTINUE_FLAGS = {"continue_final_message": True, "add_generation_prompt": False}
_PROBE_USER = {"role": "user", "content": "Reply with one letter."}


@dataclass(frozen=True)
class ServerCaps:
    continues: bool  # continues a final assistant message (needed for in-turn observations and ATS)
    assistant_images: bool  # takes images inside an assistant message
    detail: str  # what was measured, for --verbose and the docs


def find_api_root(client: RemoteClient) -> list[str]:
    """Point the client at the API root (with or without a trailing /v1) and list the served models."""
    base = client.base_url
    roots = [base] if base.endswith("/v1") else [base, base + "/v1"]
    last: Exception | None = None
    for root in roots:
        client.base_url = root
        try:
            data = client.get_json("models")
        except EngineError as e:
            if type(e) is not EngineError:  # unreachable, bad key: no other root will do better
                raise
            last = e
            continue
        ids = _model_ids(data)
        if ids is not None:
            return ids
        last = None
    client.base_url = base
    reason = f" ({last.message})" if isinstance(last, EngineError) else ""
    raise UsageError(
        f"{client.shown_url} does not look like an OpenAI-compatible server: GET /models gave no model list{reason}",
        hint="use the server's API root, e.g. http://HOST:8000/v1",
    )


def _model_ids(data: Any) -> list[str] | None:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]


def pick_model(served: list[str], wanted: str | None, shown_url: str) -> str:
    listing = ", ".join(served) if served else "none"
    if wanted:
        if wanted not in served:
            raise UsageError(
                f"the server at {shown_url} does not serve model {wanted!r} (it serves: {listing})",
                hint="pass one of those names to --api-model (or THYME_API_MODEL)",
            )
        return wanted
    if len(served) != 1:
        raise UsageError(
            f"the server at {shown_url} serves {len(served)} models ({listing}); choose one",
            hint="pass --api-model NAME (or set THYME_API_MODEL)",
        )
    return served[0]


def probe_caps(client: RemoteClient, model: str) -> ServerCaps:
    """Measure whether the server continues an assistant message and takes images inside one."""
    base = {"model": model, "max_tokens": 1, "temperature": 0.0, "stream": False}
    fresh = _prompt_tokens(client.post_json("chat/completions", {**base, "messages": [_PROBE_USER]}))
    try:
        cont = client.post_json(
            "chat/completions",
            {**base, **CONTINUE_FLAGS, "messages": [_PROBE_USER, {"role": "assistant", "content": "A"}]},
            retry=False,
        )
    except (Retryable, EngineError) as e:
        if isinstance(e, UsageError):
            raise
        return ServerCaps(False, False, f"a final assistant message was refused ({_why(e)})")
    continued = _prompt_tokens(cont)
    if fresh is None or continued is None:
        return ServerCaps(True, True, "the server reports no token usage; assuming it continues assistant messages")
    if continued - fresh > 2:
        return ServerCaps(
            False,
            False,
            f"a final assistant message is closed, not continued (+{continued - fresh} prompt tokens for one letter)",
        )
    parts = [{"type": "image_url", "image_url": {"url": _probe_png()}}, {"type": "text", "text": "A"}]
    try:
        with_image = _prompt_tokens(
            client.post_json(
                "chat/completions",
                {**base, **CONTINUE_FLAGS, "messages": [_PROBE_USER, {"role": "assistant", "content": parts}]},
                retry=False,
            )
        )
    except (Retryable, EngineError) as e:
        if isinstance(e, UsageError):
            raise
        return ServerCaps(True, False, f"continues assistant messages; refused an image inside one ({_why(e)})")
    if with_image is not None and with_image <= continued:
        return ServerCaps(True, False, "continues assistant messages; ignored an image inside one")
    return ServerCaps(True, True, "continues assistant messages, images inside them included")


def _why(e: Exception) -> str:
    text = e.reason if isinstance(e, Retryable) else getattr(e, "message", str(e))
    return text if len(text) <= 120 else text[:120] + "..."


def _prompt_tokens(response: Any) -> int | None:
    usage = response.get("usage") if isinstance(response, dict) else None
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _probe_png() -> str:
    """A 56x56 PNG (Qwen2.5-VL's smallest image: 4 vision tokens) as a data URI."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (56, 56), (128, 64, 32)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")
