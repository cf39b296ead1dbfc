"""One Hub file into the HF cache: metadata via huggingface_hub, then a resumable, verified download.

We stream the body ourselves with HTTP Range into ``blobs/<etag>.incomplete`` (huggingface_hub
restarts a partial file from byte 0), check size and sha256, then link the snapshot as the Hub client
would (docs/models.md, "Where files go"). Imported lazily, so ``thyme --help`` never pays for it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from thyme_cli.errors import DownloadError
from thyme_cli.models.hub import cache as hub_cache
from thyme_cli.models.hub.errors import Target, http_status_error, network_errors, timeout_errors, translate
from thyme_cli.ui.hub_progress import Progress

if TYPE_CHECKING:
    from huggingface_hub import HfFileMetadata

HEAD_ATTEMPTS = 2  # one retry, for timeouts and 5xx only; a refused connection fails at once
STALLED_ATTEMPTS = 3  # consecutive body attempts that bring no new byte before we give up
READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """What a HEAD on the Hub told us about one file."""

    repo: str
    filename: str
    revision: str
    commit: str
    etag: str
    size: int | None
    url: str  # where to GET the bytes (the Hub, or the CDN it redirects to)
    send_auth: bool  # False when url is on another host: the token never leaves the Hub


class _Retry(Exception):
    """A body attempt ended early in a way that another Range request may fix."""


def _token() -> str | None:
    """HF_TOKEN, passed explicitly so it is sent even where implicit tokens are disabled."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _etag_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def head(repo: str, filename: str, revision: str) -> RemoteFile:
    """Commit, etag, size and download URL of one file; typed Hub errors become DownloadErrors."""
    from huggingface_hub import hf_hub_url

    endpoint = hub_cache.hub_endpoint()
    target = Target(repo=repo, filename=filename, revision=revision, endpoint=endpoint)
    try:
        url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    except ValueError as e:  # HFValidationError: a malformed repo id
        raise DownloadError(f"invalid repo id {repo!r}: {e}", hint="`repo` must look like org/name") from None
    meta = _file_metadata(url, target)
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(
            f"{endpoint} did not answer like a Hugging Face Hub (no commit or ETag for {filename})",
            hint="check HF_ENDPOINT and any proxy between you and the Hub",
        )
    location = meta.location
    if location == url:  # no CDN redirect: pin the commit, so a moving branch cannot mix two files' bytes
        location = hf_hub_url(repo, filename, revision=meta.commit_hash, endpoint=endpoint)
    return RemoteFile(
        repo=repo,
        filename=filename,
        revision=revision,
        commit=meta.commit_hash,
        etag=meta.etag,
        size=meta.size,
        url=location,
        send_auth=urlsplit(location).netloc == urlsplit(url).netloc,
    )


def _file_metadata(url: str, target: Target) -> HfFileMetadata:
    """The HEAD answer for URL, asked again (up to HEAD_ATTEMPTS) while the Hub is busy or slow."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    retryable = timeout_errors()
    for attempt in range(1, HEAD_ATTEMPTS + 1):
        try:
            return get_hf_file_metadata(url, token=_token(), timeout=_etag_timeout())
        except Exception as e:
            server_busy = (
                isinstance(e, HfHubHTTPError)
                and e.response is not None
                and (e.response.status_code == 429 or e.response.status_code >= 500)
            )
            if attempt < HEAD_ATTEMPTS and (server_busy or isinstance(e, retryable)):
                time.sleep(0.5 * attempt)
                continue
            raise translate(e, target) from e
    raise AssertionError("unreachable: the last attempt returns or raises")


def remaining_bytes(rf: RemoteFile) -> int:
    """Bytes still to download for RF (0 if the blob is cached; the partial file counts as done)."""
    if hub_cache.blob_path(rf.repo, rf.etag).exists() or rf.size is None:
        return 0
    part = hub_cache.partial_path(rf.repo, rf.etag)
    have = part.stat().st_size if part.exists() else 0
    return max(rf.size - have, 0)


def fetch(rf: RemoteFile, progress: Progress, *, resume_hint: str) -> Path:
    """Make sure blobs/<etag> holds RF's verified bytes and the snapshot links to it; return the link."""
    blob = hub_cache.blob_path(rf.repo, rf.etag)
    with _blob_lock(rf, progress):
        if not blob.exists():
            part = hub_cache.partial_path(rf.repo, rf.etag)
            part.parent.mkdir(parents=True, exist_ok=True)
            digest = _download(rf, part, progress, resume_hint)
            _verify(rf, part, digest)
            os.replace(part, blob)
            progress.note(f"verified {rf.filename}")
        return hub_cache.link_snapshot(rf.repo, rf.commit, rf.filename, rf.etag)


@contextmanager
def _blob_lock(rf: RemoteFile, progress: Progress) -> Iterator[None]:
    """The lock huggingface_hub takes for this blob: two downloaders never write one file."""
    from filelock import FileLock, Timeout

    path = hub_cache.lock_path(rf.repo, rf.etag)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        progress.note(f"waiting for another download of {rf.filename} to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _PrefixHash:
    """sha256 of the partial file's first ``offset`` bytes, rebuilt from disk only when resuming."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.offset = 0

    def sync(self, part: Path, have: int) -> None:
        if self.offset == have:
            return
        self.h, self.offset = hashlib.sha256(), 0
        with part.open("rb") as f:
            while self.offset < have:
                block = f.read(min(1 << 20, have - self.offset))
                if not block:
                    break
                self.update(block)

    def update(self, data: bytes) -> None:
        self.h.update(data)
        self.offset += len(data)


def _download(rf: RemoteFile, part: Path, progress: Progress, resume_hint: str) -> _PrefixHash:
    """Fill PART up to rf.size, resuming with Range, retrying while attempts still bring bytes."""
    digest = _PrefixHash()
    retryable: tuple[type[BaseException], ...] = (_Retry, *network_errors())
    stalled = 0
    have = part.stat().st_size if part.exists() else 0
    if rf.size is not None and have > rf.size:  # not a prefix of this blob: start over
        part.unlink()
        have = 0
    progress.start(rf.filename, rf.size, have)
    try:
        while rf.size is None or have < rf.size:
            try:
                _stream(rf, part, have, progress, digest)
                break
            except retryable as e:
                now = part.stat().st_size if part.exists() else 0
                stalled = 0 if now > have else stalled + 1
                if stalled >= STALLED_ATTEMPTS:
                    raise DownloadError(
                        f"download of {rf.filename} interrupted at {_of(now, rf.size)} ({_why(e)}); "
                        "the partial file is kept",
                        hint=resume_hint,
                    ) from None
                progress.note(f"connection lost at {_of(now, rf.size)} of {rf.filename} ({_why(e)}); resuming")
                time.sleep(0.2 * stalled)
            have = part.stat().st_size if part.exists() else 0
    finally:
        progress.finish()
    return digest


def _stream(rf: RemoteFile, part: Path, start: int, progress: Progress, digest: _PrefixHash) -> None:
    """One GET from START to the end of the file; _Retry (or a network error) when it ends early."""
    import httpx

    headers = _headers(rf)
    if start:
        headers["Range"] = f"bytes={start}-"
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
    with (
        httpx.Client(timeout=timeout, follow_redirects=True) as client,
        client.stream("GET", rf.url, headers=headers) as response,
    ):
        status = response.status_code
        if status == 416:  # our partial is not a prefix the server recognises: start over
            part.unlink(missing_ok=True)
            raise _Retry("the server refused the resume offset")
        if status == 206 and not _range_starts_at(response.headers.get("Content-Range", ""), start):
            part.unlink(missing_ok=True)
            raise _Retry("the server resumed at the wrong offset")
        if status == 200 and start:
            progress.note(f"the server cannot resume; downloading {rf.filename} again from the start")
            progress.restart()
            start = 0
        elif status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}")
        elif status not in (200, 206):
            target = Target(rf.repo, rf.filename, rf.revision, hub_cache.hub_endpoint())
            raise http_status_error(status, target)
        digest.sync(part, start)
        with part.open("ab" if start else "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
                f.flush()  # what reached us is on disk: a crash leaves a resumable prefix
                digest.update(chunk)
                progress.advance(len(chunk))
    if rf.size is not None and part.stat().st_size < rf.size:
        raise _Retry("the body ended early")


def _headers(rf: RemoteFile) -> dict[str, str]:
    """The Hub client's own headers (user agent, token), minus the token when leaving the Hub."""
    from huggingface_hub.utils import build_hf_headers

    headers = dict(build_hf_headers(token=_token()))
    headers["Accept-Encoding"] = "identity"  # byte offsets must be offsets in the file
    if not rf.send_auth:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return headers


def _range_starts_at(content_range: str, start: int) -> bool:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range)
    return m is not None and int(m.group(1)) == start


def _verify(rf: RemoteFile, part: Path, digest: _PrefixHash) -> None:
    """Size always; sha256 when the etag is one (LFS files). A bad file is deleted, never kept."""
    size = part.stat().st_size
    problem = None
    if rf.size is not None and size != rf.size:
        problem = f"size {size} bytes, expected {rf.size}"
    elif hub_cache.SHA256_RE.fullmatch(rf.etag):
        digest.sync(part, size)
        got = digest.h.hexdigest()
        if got != rf.etag:
            problem = f"sha256 {got[:16]}… does not match the Hub's {rf.etag[:16]}…"
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"downloaded {rf.filename} is corrupt ({problem}); the bad file was deleted",
            hint="run the pull again; if it fails again, a proxy or mirror (HF_ENDPOINT) is altering the file",
        )


def _of(n: int, total: int | None) -> str:
    from thyme_cli.ui.console import human_size

    return f"{human_size(n)}/{human_size(total)}" if total else human_size(n)


def _why(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if "peer closed connection" in text:
        return "the server closed the connection"
    return text.splitlines()[0][:120]


def list_files(repo: str, commit: str) -> dict[str, int]:
    """Every file of REPO at COMMIT with its size (the Hub's tree API); Hub errors become DownloadErrors."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    endpoint = hub_cache.hub_endpoint()
    target = Target(repo=repo, filename="(file list)", revision=commit, endpoint=endpoint)
    try:
        entries = HfApi(endpoint=endpoint).list_repo_tree(repo, revision=commit, recursive=True, token=_token())
        return {e.path: int(e.size) for e in entries if isinstance(e, RepoFile)}
    except Exception as e:
        raise translate(e, target) from e
