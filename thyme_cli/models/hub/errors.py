"""huggingface_hub and HTTP failures -> one clear DownloadError each (message + hint).

The Hub client raises a dozen exception types across versions and HTTP stacks (httpx2 in 2.x,
httpx in 1.x, requests in 0.x); users should see one line that says what happened and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from thyme_cli.errors import DownloadError

OFFLINE_HINT = "unset HF_HUB_OFFLINE (or set it to 0) to download from the Hub"


@dataclass(frozen=True)
class Target:
    """What we were fetching, for the message."""

    repo: str
    filename: str
    revision: str
    endpoint: str


def _classes(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The named exception classes of whichever HTTP libraries are installed."""
    import importlib

    found: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx", "requests.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def timeout_errors() -> tuple[type[BaseException], ...]:
    return _classes(("TimeoutException", "Timeout"))


def connect_errors() -> tuple[type[BaseException], ...]:
    return _classes(("ConnectError", "ConnectionError"))


def network_errors() -> tuple[type[BaseException], ...]:
    """Any transport-level failure (connection, timeout, protocol, cut body)."""
    return _classes(("TransportError", "RequestException"))


def offline_error(what: str) -> DownloadError:
    return DownloadError(f"offline mode (HF_HUB_OFFLINE=1) and {what} is not downloaded", hint=OFFLINE_HINT)


def http_status_error(status: int, target: Target) -> DownloadError:
    """A failed HTTP status from the Hub or its CDN, when no typed error says more."""
    where = f"{target.repo}/{target.filename}"
    if status in (401, 403):
        return DownloadError(
            f"the Hub refused access to {where} (HTTP {status})",
            hint="if the repo is private or gated, set HF_TOKEN to a token with access to it",
        )
    if status == 404:
        return DownloadError(f"{where} was not found at {target.endpoint} (HTTP 404)", hint="check HF_ENDPOINT")
    if status == 429 or status >= 500:
        return DownloadError(
            f"the Hub at {target.endpoint} answered HTTP {status} for {where}", hint="try again in a few minutes"
        )
    return DownloadError(f"unexpected HTTP {status} from {target.endpoint} for {where}")


def translate(error: BaseException, target: Target) -> DownloadError:
    """The DownloadError a user should see for ERROR raised while fetching TARGET."""
    for explain in (_hub_error, _network_error):
        explained = explain(error, target)
        if explained is not None:
            return explained
    return DownloadError(f"download of {target.repo}/{target.filename} failed: {type(error).__name__}: {error}")


def _hub_error(error: BaseException, target: Target) -> DownloadError | None:
    """What huggingface_hub's own error types say (gated, missing repo / revision / file, HTTP status)."""
    from huggingface_hub import errors as hf

    repo, endpoint = target.repo, target.endpoint
    if isinstance(error, hf.GatedRepoError):
        return DownloadError(
            f"{repo} is a gated model: you must accept its licence and authenticate to download it",
            hint=f"accept the licence on {endpoint}/{repo}, then set HF_TOKEN to an access token of that account",
        )
    if isinstance(error, hf.RevisionNotFoundError):
        return DownloadError(
            f"revision {target.revision!r} not found in {repo}",
            hint="check `revision` in the model entry (a branch, tag or 40-hex commit)",
        )
    if isinstance(error, hf.RepositoryNotFoundError):
        return DownloadError(
            f"repository {repo} not found on {endpoint} (or it is private)",
            hint="check `repo` in the model entry; for a private repo set HF_TOKEN",
        )
    if isinstance(error, hf.EntryNotFoundError):
        return DownloadError(
            f"file {target.filename} not found in {repo} at revision {target.revision}",
            hint="check `model_file` / `mmproj_file` in the model entry against the repo's file list",
        )
    if isinstance(error, hf.OfflineModeIsEnabled):
        return offline_error(f"{repo}/{target.filename}")
    if isinstance(error, hf.FileMetadataError):
        return DownloadError(
            f"{endpoint} did not answer like a Hugging Face Hub (no commit or ETag for {target.filename})",
            hint="check HF_ENDPOINT and any proxy between you and the Hub",
        )
    if isinstance(error, hf.HfHubHTTPError) and error.response is not None:
        return http_status_error(error.response.status_code, target)
    return None


def _network_error(error: BaseException, target: Target) -> DownloadError | None:
    """A connection that failed, timed out or broke on the way."""
    endpoint = target.endpoint
    if isinstance(error, connect_errors()):
        return DownloadError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({_reason(error)})",
            hint="check your network or HF_ENDPOINT; set HF_HUB_OFFLINE=1 to use only downloaded models",
        )
    if isinstance(error, timeout_errors()):
        return DownloadError(
            f"the Hugging Face Hub at {endpoint} did not answer in time",
            hint="check your network and try again; HF_HUB_ETAG_TIMEOUT sets the wait in seconds",
        )
    if isinstance(error, network_errors()):
        return DownloadError(f"network error talking to {endpoint}: {_reason(error)}", hint="try again")
    return None


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200]
