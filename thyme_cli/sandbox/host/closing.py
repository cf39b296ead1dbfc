"""Sessions, jails and pools are closed on `with` exit, and as a last resort when collected."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Self


class Closing:
    """A context manager whose exit (or garbage collection) calls `close`, which must be idempotent."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
