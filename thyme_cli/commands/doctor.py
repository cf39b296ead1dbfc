"""`thyme doctor`: one table of what works on this machine, with a hint for each problem."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

from thyme_cli.errors import ThymeError
from thyme_cli.ui.console import handle_errors, human_size, out_console

Status = Literal["ok", "warn", "fail"]
LOW_DISK_BYTES = 10 * 1000**3


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


def _python() -> Check:
    version = platform.python_version()
    ok = sys.version_info >= (3, 11)
    return Check(
        "python",
        "ok" if ok else "fail",
        f"{version} ({sys.executable})",
        "" if ok else "thyme needs Python 3.11 or newer",
    )


def _llama_ok() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _llama() -> Check:
    try:
        import llama_cpp
    except Exception as e:  # a broken build raises OSError etc., not only ImportError
        return Check("llama-cpp-python", "fail", f"cannot import: {e}", "run ./install.sh (it builds llama.cpp)")
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    return Check(
        "llama-cpp-python",
        "ok",
        f"{llama_cpp.__version__}, GPU offload: {'yes' if gpu else 'no (CPU build)'}",
        "" if gpu else "for a GPU build: ./install.sh --cuda (needs nvcc) or --metal on macOS",
    )


def _quantized() -> Check:
    """A short quantized generation in a child process: does llama.cpp's fast CPU path crash here?"""
    from thyme_cli.engine.llama import cpu_probe

    name = "quantized models"
    try:
        result = cpu_probe.probe_and_cache()
    except Exception as e:  # no llama.cpp: the llama-cpp-python check already says so
        return Check(name, "warn", f"not checked: {e}")
    forced = cpu_probe.decide()
    override = f"; {forced.detail}" if forced.source == "env" else ""
    if result.source != "probe":
        return Check(name, "warn", result.detail + override, "run `thyme doctor` again; see docs/engine.md")
    if result.extra_bufts:
        return Check(name, "ok", result.detail + override)
    if not result.plain_ok:
        return Check(
            name,
            "fail",
            result.detail + override,
            "this llama.cpp build cannot run quantized models here: rebuild with ./install.sh",
        )
    if forced.source == "env" and forced.extra_bufts:
        return Check(name, "fail", result.detail + override, "unset THYME_EXTRA_BUFTS: with it on, models crash here")
    return Check(name, "ok", result.detail + " (fixed)" + override)


def _sandboxes() -> list[Check]:
    from thyme_cli.sandbox.host.factory import probe_backends

    checks = [
        Check(f"sandbox: {p.name}", "ok" if p.works else "warn", p.detail, "" if p.works else p.hint or "")
        for p in probe_backends()
    ]
    if not any(c.status == "ok" for c in checks):
        checks.append(
            Check(
                "sandbox",
                "fail",
                "no sandbox backend starts here; code steps cannot run isolated",
                next((c.hint for c in checks if c.hint), "see docs/sandbox.md"),
            )
        )
    else:
        first = next(c for c in checks if c.status == "ok")
        checks.append(Check("sandbox", "ok", f"--sandbox auto uses {first.name.removeprefix('sandbox: ')}"))
    return checks


def _models() -> list[Check]:
    from thyme_cli.models.registry import load_registry
    from thyme_cli.models.store import installed_files, preferred_default

    try:
        registry = load_registry()
    except ThymeError as e:
        return [Check("config", "fail", e.message, e.hint or "")]
    installed = [name for name, spec in registry.models.items() if installed_files(spec) is not None]
    default = preferred_default(registry)
    checks = [
        Check("config", "ok", str(registry.config_path) + ("" if registry.config_path.exists() else " (none yet)"))
    ]
    if installed:
        checks.append(Check("models", "ok", "installed: " + ", ".join(installed)))
    else:
        checks.append(
            Check(
                "models",
                "warn",
                "no model installed yet",
                f"thyme models pull {default}   (or let `thyme ask --yes` download it)",
            )
        )
    if default not in installed:
        checks.append(Check("default model", "warn", f"{default} is not installed", f"thyme models pull {default}"))
    return checks


def _disk() -> list[Check]:
    from thyme_cli import paths

    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    checks = []
    for label, where in (("disk: model cache", hf_home), ("disk: runs", paths.data_dir())):
        probe = where
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        low = free < LOW_DISK_BYTES
        checks.append(
            Check(
                label,
                "warn" if low else "ok",
                f"{human_size(free)} free at {where}",
                "a 7B model needs about 6 GB" if low else "",
            )
        )
    return checks


def _engine_defaults() -> list[Check]:
    """What the engine would use here (threads, KV cache, image budget, memory) and why."""
    from thyme_cli.commands.doctor_defaults import engine_defaults

    return [Check(name, status, detail, hint) for name, status, detail, hint in engine_defaults()]  # type: ignore[arg-type]


@handle_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check Python, llama.cpp, the sandbox, models and disk; hint at fixes. Exits 1 when thyme cannot run here."""
    checks = [
        _python(),
        _llama(),
        *([_quantized()] if _llama_ok() else []),
        *_sandboxes(),
        *_models(),
        *_disk(),
        *_engine_defaults(),
    ]
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        typer.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="thyme doctor", title_justify="left")
        for col in ("check", "status", "detail", "hint"):
            table.add_column(col, overflow="fold")
        colour = {"ok": "green", "warn": "yellow", "fail": "red bold"}
        for c in checks:
            table.add_row(escape(c.name), f"[{colour[c.status]}]{c.status}[/]", escape(c.detail), escape(c.hint))
        out_console().print(table)
        out_console().print("thyme cannot run here: fix the failed checks above" if failed else "thyme can run here")
    if failed:
        raise typer.Exit(1)
