"""The same Thyme loop against an OpenAI-compatible server (vLLM, SGLang, llama-server).

The server holds the weights; thyme keeps each question's history, runs the code in its own sandbox
and sends images as data URIs; one engine serves many conversations at once. Connecting and choosing
the model is models/loading.py (`load_remote`); the THYME_API_* settings are in docs/remote.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from thyme_cli.engine.remote.chat import RemoteConversation, RemoteSampling
from thyme_cli.engine.remote.http import RemoteClient, RetryPolicy, check_api_key
from thyme_cli.engine.remote.probe import ServerCaps
from thyme_cli.errors import UsageError

KEY_VARS = ("THYME_API_KEY", "OPENAI_API_KEY")


@dataclass
class RemoteEngine:
    """A model on a server: opens independent conversations that share one connection pool."""

    client: RemoteClient
    model: str
    caps: ServerCaps
    sampling: RemoteSampling
    extra_body: dict[str, Any] = field(default_factory=dict)
    name: str = "remote"
    concurrent: bool = True

    def open(self) -> RemoteConversation:
        return RemoteConversation(self.client, self.model, self.caps, self.sampling, dict(self.extra_body))

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class RemoteConfig:
    base_url: str
    api_key: str | None
    timeout_s: float
    policy: RetryPolicy
    extra_body: dict[str, Any]

    @classmethod
    def from_env(cls, base_url: str | None, env: dict[str, str] | None = None) -> RemoteConfig:
        env = dict(os.environ) if env is None else env
        return cls(
            base_url=_check_url(base_url),
            api_key=_api_key(env),
            timeout_s=_number(env, "THYME_API_TIMEOUT", 600.0, low=1.0),
            policy=RetryPolicy(
                max_attempts=int(_number(env, "THYME_API_RETRIES", 6, low=1, integer=True)),
                budget_s=_number(env, "THYME_API_RETRY_BUDGET", 120.0, low=0.0),
            ),
            extra_body=_extra_body(env),
        )


# The OpenAI API's ranges, which vLLM, SGLang and llama-server enforce (or clamp) too.
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1


def check_sampling(temperature: float, top_p: float, top_k: int, seed: int) -> None:
    """Refuse, before the first request, what an OpenAI-compatible server would answer with HTTP 400."""
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise UsageError(
            f"--temperature must be between 0 and {MAX_TEMPERATURE:g} with --backend openai "
            f"(the OpenAI API's range), not {temperature:g}"
        )
    if not 0.0 < top_p <= 1.0:
        raise UsageError(f"--top-p must be above 0 and at most 1 with --backend openai, not {top_p:g}")
    if top_k < 0:
        raise UsageError(f"--top-k must be 0 (off) or more, not {top_k}")
    if not -MAX_SEED - 1 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must fit in 64 bits with --backend openai, not {seed}")


def _check_url(base_url: str | None) -> str:
    if not base_url or not base_url.strip():
        raise UsageError(
            "--backend openai needs the server's URL",
            hint="pass --base-url http://HOST:8000/v1 (or set THYME_BASE_URL)",
        )
    url = base_url.strip()
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise UsageError(
            "--base-url must be an http(s) URL such as http://HOST:8000/v1", hint="check --base-url (or THYME_BASE_URL)"
        )
    return url


def _api_key(env: dict[str, str]) -> str | None:
    for var in KEY_VARS:
        value = env.get(var, "")
        if value.strip():
            return check_api_key(value, var)
    return None


def _number(env: dict[str, str], var: str, default: float, *, low: float, integer: bool = False) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        value = float("nan")
    if not value >= low:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{var} must be {kind} >= {low:g}, not {raw!r}")
    return value


def _extra_body(env: dict[str, str]) -> dict[str, Any]:
    raw = env.get("THYME_API_EXTRA_BODY", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UsageError(f"THYME_API_EXTRA_BODY is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError("THYME_API_EXTRA_BODY must be a JSON object, e.g. '{\"repetition_penalty\": 1.05}'")
    return value
