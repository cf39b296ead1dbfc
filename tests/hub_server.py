"""A real HTTP server on 127.0.0.1 that answers file requests the way the Hugging Face Hub does.

Tests point HF_ENDPOINT at it and run the real huggingface_hub client and the real thyme CLI
against it: no network, no mocks. It serves ``HEAD|GET /{org}/{name}/resolve/{revision}/{file}``
and the file listing ``GET /api/models/{org}/{name}/tree/{revision}`` (what ``list_repo_tree`` asks)
with the Hub's headers (X-Repo-Commit, X-Linked-Etag = sha256, X-Linked-Size, Range -> 206), the
Hub's typed errors (X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo),
an optional CDN redirect to another origin, and faults a flaky link produces: a body cut after N
bytes, connections dropped before any byte, a body that stalls, Range ignored, corrupted bytes.
Every request is logged (method, path, Range, Authorization, status, body bytes sent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urlsplit

COMMIT = "3b0c1f6e8d9a4b5c6d7e8f9a0b1c2d3e4f5a6b7c"
CHUNK = 16 * 1024


@dataclass
class Repo:
    """One model repo: its files at one commit, plus how the server should misbehave for it."""

    files: dict[str, bytes]
    commit: str = COMMIT
    gated_token: str | None = None  # gated: only `Authorization: Bearer <token>` gets in
    advertised_size: dict[str, int] = field(default_factory=dict)  # lie about a size in HEAD
    corrupt: set[str] = field(default_factory=set)  # flip a byte of these bodies (etag stays true)

    def sha256(self, filename: str) -> str:
        return hashlib.sha256(self.files[filename]).hexdigest()


@dataclass
class Faults:
    """Failures applied to the next body GETs of `filename` (or of any file when None)."""

    filename: str | None = None
    cut_after: int | None = None  # close the connection after this many body bytes...
    cut_count: int = 0  # ...for this many GETs
    drop_count: int = 0  # then close this many GETs right after the headers
    stall_after: int | None = None  # send this many bytes, then hang until release_stall()
    ignore_range_count: int = 0  # answer this many Range GETs with 200 and the whole file


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int
    body_bytes: int


class LocalHub:
    """The server, its repos, its faults and its request log. Use as a context manager."""

    def __init__(self, repos: dict[str, Repo], *, cdn: bool = False) -> None:
        self.repos = repos
        self.cdn = cdn  # HEAD answers 302 to http://localhost:<port>/cdn/<sha> (another origin)
        self.faults = Faults()
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self._stall = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stall.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def body_gets(self, filename: str) -> list[Request]:
        """GETs that asked for FILENAME's bytes (Hub URL or CDN URL)."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    def release_stall(self) -> None:
        self._stall.set()

    def record(self, request: Request) -> None:
        with self._lock:
            self._log.append(request)

    def take_fault(self, filename: str, ranged: bool) -> tuple[str, int | None]:
        """Decide, under the lock, what this body GET suffers: ('ok'|'cut'|'drop'|'stall'|'full', n)."""
        with self._lock:
            f = self.faults
            if f.filename not in (None, filename):
                return "ok", None
            if ranged and f.ignore_range_count > 0:
                f.ignore_range_count -= 1
                return "full", None
            if f.stall_after is not None:
                n, f.stall_after = f.stall_after, None
                return "stall", n
            if f.cut_count > 0 and f.cut_after is not None:
                f.cut_count -= 1
                return "cut", f.cut_after
            if f.drop_count > 0:
                f.drop_count -= 1
                return "drop", 0
            return "ok", None

    def wait_stall(self) -> None:
        self._stall.wait(timeout=30)


def _make_handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    # -- plumbing
    def _log(self, status: int, sent: int = 0) -> None:
        self.hub.record(
            Request(
                method=self.command,
                path=unquote(urlsplit(self.path).path),
                range=self.headers.get("Range"),
                authorization=self.headers.get("Authorization"),
                status=status,
                body_bytes=sent,
            )
        )

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET" and body:
            self.wfile.write(body)
        self._log(status, len(body) if self.command == "GET" else 0)

    def _error(self, status: int, code: str, extra: dict[str, str] | None = None) -> None:
        self._reply(status, {"X-Error-Code": code, "X-Error-Message": code, **(extra or {})}, b'{"error": "x"}')

    # -- routes
    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        m = re.fullmatch(r"/cdn/([0-9a-f]{64})/(.+)", path)
        if m:
            return self._cdn(m.group(1), m.group(2))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
        if m and self.command == "GET":
            return self._tree(m.group(1), m.group(2))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m:
            return self._reply(404, {}, b"no route")
        repo_id, revision, filename = m.groups()
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if repo.gated_token is not None and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            return self._error(401, "GatedRepo")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        if filename not in repo.files:
            return self._error(404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
        data = repo.files[filename]
        sha = repo.sha256(filename)
        size = repo.advertised_size.get(filename, len(data))
        meta = {"X-Repo-Commit": repo.commit, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size)}
        if self.hub.cdn:
            meta["Location"] = f"http://localhost:{self.hub.port}/cdn/{sha}/{filename}"
            return self._reply(302, meta)
        meta["ETag"] = f'"{sha}"'
        self._body(repo, filename, meta)

    def _tree(self, repo_id: str, revision: str) -> None:
        """The recursive file listing, every file described as an LFS file (sha256 oid, real size)."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if repo.gated_token is not None and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            return self._error(401, "GatedRepo")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        entries = [
            {
                "type": "file",
                "oid": hashlib.sha1(data).hexdigest(),
                "size": len(data),
                "path": name,
                "lfs": {"oid": repo.sha256(name), "size": len(data), "pointerSize": 134},
            }
            for name, data in sorted(repo.files.items())
        ]
        self._reply(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

    def _cdn(self, sha: str, filename: str) -> None:
        for repo in self.hub.repos.values():
            if filename in repo.files and repo.sha256(filename) == sha:
                return self._body(repo, filename, {"ETag": f'"{sha}"'})
        self._reply(404, {}, b"no blob")

    def _body(self, repo: Repo, filename: str, headers: dict[str, str]) -> None:
        data = repo.files[filename]
        if filename in repo.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        total = len(data)
        start, status = 0, 200
        wanted = self.headers.get("Range") if self.command == "GET" else None
        fault, n = self.hub.take_fault(filename, wanted is not None) if self.command == "GET" else ("ok", None)
        if wanted and fault != "full":
            m = re.fullmatch(r"bytes=(\d+)-", wanted.strip())
            if m is None or int(m.group(1)) >= total:
                return self._reply(416, {"Content-Range": f"bytes */{total}"})
            start, status = int(m.group(1)), 206
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.send_header("Content-Length", str(total - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "HEAD":
            return self._log(status)
        limit = total - start if n is None else min(n, total - start)
        sent = 0
        try:
            while sent < limit:
                piece = data[start + sent : start + min(sent + CHUNK, limit)]
                self.wfile.write(piece)
                sent += len(piece)
            self.wfile.flush()
            if fault == "stall":
                self.hub.wait_stall()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if fault in ("cut", "drop", "stall"):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        self._log(status, sent)
