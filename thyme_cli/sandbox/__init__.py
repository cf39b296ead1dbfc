"""Running model-written code: the Sandbox protocol (base.py), the host side that starts and talks to
jails (host/), and what runs inside them (jail/: worker, zygote, seccomp, Thyme's code repairs).

Import-light on purpose: the CLI should not pay for subprocess machinery until a sandbox is
opened. Names are re-exported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thyme_cli.sandbox.base import ExecResult, Sandbox
    from thyme_cli.sandbox.host.factory import BackendProbe, open_sandbox, probe_backends
    from thyme_cli.sandbox.host.limits import Limits

__all__ = ["BackendProbe", "ExecResult", "Limits", "Sandbox", "open_sandbox", "probe_backends"]

_WHERE = {
    "ExecResult": "thyme_cli.sandbox.base",
    "Sandbox": "thyme_cli.sandbox.base",
    "BackendProbe": "thyme_cli.sandbox.host.factory",
    "open_sandbox": "thyme_cli.sandbox.host.factory",
    "probe_backends": "thyme_cli.sandbox.host.factory",
    "Limits": "thyme_cli.sandbox.host.limits",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
