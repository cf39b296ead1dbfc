"""HTTP to an OpenAI-compatible server: one shared client, bounded retries, SSE streams, no leaked key.

Every error that reaches the user is one line built here, with the API key and any password in
the URL replaced by ``***``; httpx exceptions are never chained into them (a THYME_DEBUG
traceback shows our line, not request internals).
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from thyme_cli.errors import BackendUnavailable, EngineError, UsageError

# HTTP statuses worth another try: busy, overloaded, restarting, or a proxy in front that is.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0
MESSAGE_CHARS = 300


class RemoteUnavailable(BackendUnavailable):
    """The server could not be reached for longer than the retry budget (down, restarting, gone)."""


class AuthError(UsageError):
    """The server refused the API key (or wants one): a setting to fix, not a failure to retry."""


class Retryable(Exception):
    """A failed attempt that may work later; ``connection`` marks "could not talk to it at all"."""

    def __init__(self, reason: str, *, retry_after: float | None = None, connection: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.connection = connection


def redact_url(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), clamped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter; a server's Retry-After wins when longer."""

    max_attempts: int = 6  # the first try included
    base_s: float = 0.5
    cap_s: float = 20.0
    budget_s: float = 120.0  # most seconds spent waiting between the attempts of one request

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed already)."""
        backoff = rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        if retry_after is not None:
            # Honour the server, with a little jitter so that N waiting clients do not return at once.
            return retry_after + rng.uniform(0.0, min(1.0, 0.1 * retry_after + 0.05))
        return backoff


class RetryState:
    """The attempts of one logical request; says how long to wait, or gives up with a clear error."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, where: str) -> None:
        self.policy = policy
        self.rng = rng
        self.where = where
        self.attempt = 0
        self.waited = 0.0

    def next_delay(self, error: Retryable) -> float:
        self.attempt += 1
        delay = self.policy.delay(self.attempt, error.retry_after, self.rng)
        if self.attempt >= self.policy.max_attempts or self.waited + delay > self.policy.budget_s:
            tried = f"{self.attempt} attempt(s) over {self.waited:.0f} s"
            if error.connection:
                raise RemoteUnavailable(
                    f"cannot reach the server at {self.where}: {error.reason} (gave up after {tried})",
                    hint="is the server up? an interrupted batch continues with --resume once it is back",
                )
            raise EngineError(f"the server at {self.where} kept failing: {error.reason} (gave up after {tried})")
        self.waited += delay
        return delay


@dataclass
class StreamPiece:
    """One parsed SSE chunk: new text, and the end of the choice or the token usage when they come."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class RemoteClient:
    """One connection pool shared by every conversation (httpx clients are thread-safe)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        policy: RetryPolicy,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.on_retry = on_retry
        self._secrets = [s for s in (api_key, urlsplit(base_url).password) if s]
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            follow_redirects=True,
        )

    @property
    def shown_url(self) -> str:
        return redact_url(self.base_url)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def close(self) -> None:
        self._http.close()

    def retry_state(self) -> RetryState:
        with self._rng_lock:
            rng = random.Random(self._rng.random())
        return RetryState(self.policy, rng, self.shown_url)

    def wait(self, state: RetryState, error: Retryable) -> None:
        """Sleep before the next attempt (or raise when the budget is spent), saying why."""
        delay = state.next_delay(error)
        if self.on_retry is not None:
            self.on_retry(
                f"{self.redact(error.reason)}; retrying in {delay:.1f} s "
                f"(attempt {state.attempt + 1} of {self.policy.max_attempts})"
            )
        time.sleep(delay)

    # -- plain JSON requests -------------------------------------------------------------------------

    def get_json(self, path: str, *, retry: bool = True) -> Any:
        return self._json("GET", path, None, retry=retry)

    def post_json(self, path: str, body: dict[str, Any], *, retry: bool = True) -> Any:
        return self._json("POST", path, body, retry=retry)

    def _json(self, method: str, path: str, body: dict[str, Any] | None, *, retry: bool) -> Any:
        state = self.retry_state()
        while True:
            try:
                return self._json_once(method, path, body)
            except Retryable as e:
                if e.connection:  # nothing answers: say so at once instead of waiting out the budget
                    raise RemoteUnavailable(
                        f"cannot reach the server at {self.shown_url}: {e.reason}",
                        hint="is it running? check --base-url (or THYME_BASE_URL)",
                    ) from None
                if not retry:
                    raise
                self.wait(state, e)

    def _json_once(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        try:
            resp = self._http.request(method, f"{self.base_url}/{path}", json=body)
        except httpx.TimeoutException as e:
            raise Retryable(f"timed out ({type(e).__name__})", connection=True) from None
        except httpx.TransportError as e:
            raise Retryable(self._transport_reason(e), connection=True) from None
        if resp.status_code != 200:
            raise self.status_error(resp, path)
        try:
            return resp.json()
        except ValueError:
            raise EngineError(
                f"{self.shown_url}/{path} did not answer JSON (HTTP {resp.status_code}, "
                f"{resp.headers.get('content-type', 'no content type')}): not an OpenAI-compatible server?"
            ) from None

    # -- streamed chat completions -------------------------------------------------------------------

    def stream_chat(self, body: dict[str, Any]) -> Generator[StreamPiece, None, None]:
        """One attempt at a streamed /chat/completions; closing the iterator early aborts it."""
        try:
            with self._http.stream("POST", f"{self.base_url}/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise self.status_error(resp, "chat/completions")
                yield from self._sse(resp)
        except httpx.TimeoutException as e:
            raise Retryable(f"timed out ({type(e).__name__})", connection=True) from None
        except httpx.TransportError as e:
            raise Retryable(self._transport_reason(e), connection=True) from None

    def _sse(self, resp: httpx.Response) -> Iterator[StreamPiece]:
        finished = False
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue  # comments (": ping"), event names, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise EngineError(f"the server sent a stream line that is not JSON: {self._short(data)!r}") from None
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                raise self._stream_error(chunk["error"])
            piece = _piece(chunk)
            finished = finished or piece.finish_reason is not None
            yield piece
        if not finished:
            raise Retryable(
                "the server ended the stream before the reply was finished "
                "(llama_cpp.server interrupts streams unless started with --interrupt_requests False)"
            )

    # -- errors --------------------------------------------------------------------------------------

    def _short(self, text: str) -> str:
        text = self.redact(" ".join(text.split()))
        return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."

    def _transport_reason(self, e: httpx.TransportError) -> str:
        text = str(e) or type(e).__name__
        if isinstance(e, httpx.ConnectError):
            refused = "refused" in text.lower() or "errno 111" in text.lower()
            return "connection refused" if refused else f"cannot connect ({self._short(text)})"
        return f"connection lost ({type(e).__name__}: {self._short(text)})"

    def server_message(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            return self._short(resp.text) or "(empty body)"
        if isinstance(data, dict):
            err = data.get("error", data.get("detail", data.get("message")))
            if isinstance(err, dict):
                err = err.get("message", err)
            if err is not None:
                return self._short(err if isinstance(err, str) else json.dumps(err))
        return self._short(json.dumps(data))

    def status_error(self, resp: httpx.Response, path: str) -> Exception:
        code = resp.status_code
        message = self.server_message(resp)
        if code in (401, 403):
            return AuthError(
                f"the server at {self.shown_url} refused the API key (HTTP {code}): {message}",
                hint="set THYME_API_KEY (or OPENAI_API_KEY) to the server's key",
            )
        if code in RETRY_STATUSES:
            return Retryable(
                f"HTTP {code} from {path}: {message}", retry_after=parse_retry_after(resp.headers.get("retry-after"))
            )
        return EngineError(f"the server rejected the request to /{path} (HTTP {code}): {message}")

    def _stream_error(self, error: Any) -> Exception:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message", error) if isinstance(error, dict) else error
        text = self._short(message if isinstance(message, str) else json.dumps(message))
        if isinstance(code, int) and code in RETRY_STATUSES:
            return Retryable(f"the server failed mid-reply ({code}): {text}")
        return EngineError(f"the server failed mid-reply: {text}")


def _piece(chunk: dict[str, Any]) -> StreamPiece:
    piece = StreamPiece(usage=chunk.get("usage") if isinstance(chunk.get("usage"), dict) else None)
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            piece.text = delta["content"]
        elif isinstance(choice.get("text"), str):  # a completions-style chunk
            piece.text = choice["text"]
        if isinstance(choice.get("finish_reason"), str):
            piece.finish_reason = choice["finish_reason"]
    return piece


_SAFE_KEY = re.compile(r"^[\x21-\x7e]+$")


def check_api_key(key: str, source: str) -> str:
    """The key as an HTTP header can carry it; never echoes the key in the error."""
    key = key.strip()
    if not _SAFE_KEY.match(key):
        raise UsageError(
            f"{source} holds characters an HTTP header cannot carry (spaces, newlines or non-ASCII)",
            hint=f"check the value of {source}",
        )
    return key
