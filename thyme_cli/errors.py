"""Errors that reach the user as one clear line and an exit code, never a traceback.

Library code raises these; the CLI layer (``thyme_cli.cli.handle_errors``) turns them into a single
``error: ...`` line (plus an optional ``hint: ...``) and the exit code. Set THYME_DEBUG=1 to see the
traceback of any error.
"""

from __future__ import annotations

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NO_ANSWER = 3


class ThymeError(Exception):
    """An error with a message meant for the user, an optional hint and an exit code."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ThymeError):
    """The user asked for something that cannot be: bad name, bad file, bad flag value."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The user's config file cannot be read."""


class ModelNotFound(UsageError):
    """A model name that is neither built in nor in the user's config."""


class DownloadError(ThymeError):
    """The Hub could not give us a file (offline, unreachable, gated, missing, corrupt)."""


class DiskSpaceError(ThymeError):
    """Not enough free disk for what we are about to write."""


class SandboxUnavailable(ThymeError):
    """No sandbox backend can start on this machine."""


class EngineError(ThymeError):
    """The inference engine failed (model does not load, context overflow, decode failure)."""


class BackendUnavailable(EngineError):
    """The model server is gone for longer than retries cover: stop, do not record items as failed."""
