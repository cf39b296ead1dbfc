"""Qwen2.5-VL safetensors (Thyme-RL or any fine-tune) -> a quantized GGUF pair thyme can run.

Six phases (download, text, mmproj, quantize, verify, install), each recorded in a state file so an
interrupted run resumes after the last finished one; docs/convert.md ("What happens") has the table.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyme_cli import paths
from thyme_cli.errors import DiskSpaceError, ThymeError, UsageError
from thyme_cli.models.convert.quantize import QUANT_FTYPES
from thyme_cli.models.hub import cache as hub_cache
from thyme_cli.models.registry import load_registry, upsert_user_model
from thyme_cli.models.spec import ModelSpec
from thyme_cli.models.store import ModelFiles, fits, installed_files, nearest_existing
from thyme_cli.ui.console import human_size
from thyme_cli.ui.convert_progress import PhaseDisplay

if TYPE_CHECKING:
    from thyme_cli.models.convert.source import HubSnapshot

FLOAT_TYPES = ("F16", "BF16", "F32")  # written by the converter itself, no quantize phase
QUANTS = (*QUANT_FTYPES, *FLOAT_TYPES)
MMPROJ_TYPES = ("f16", "q8_0", "f32")
DEFAULT_QUANT = "Q4_K_M"
DEFAULT_MMPROJ = "f16"
# Approximate bits per weight of each language-model type, for the disk estimate.
_BITS = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q4_0": 4.5,
    "Q3_K_M": 3.9,
}
_MMPROJ_SHARE = 0.12  # the vision tower's share of a Qwen2.5-VL checkpoint, rounded up
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATE_VERSION = 1


@dataclass(frozen=True)
class ConvertRequest:
    """One conversion: where from, what to produce, and how to tell the user to resume it."""

    name: str
    repo: str | None = None
    revision: str = "main"
    source_dir: Path | None = None
    quant: str = DEFAULT_QUANT
    mmproj_type: str = DEFAULT_MMPROJ
    keep_download: bool = False
    pre_tokenizer: str | None = None
    resume_command: str = ""

    @property
    def model_file(self) -> str:
        return f"{self.name}-{self.quant}.gguf"

    @property
    def mmproj_file(self) -> str:
        return f"mmproj-{self.name}-{self.mmproj_type}.gguf"

    @property
    def source_label(self) -> str:
        return f"{self.repo}@{self.revision}" if self.repo else str(self.source_dir)


def normalize_quant(value: str) -> str:
    """'q4_k_m' -> 'Q4_K_M'; an unknown type is a usage error listing the known ones."""
    upper = value.strip().upper()
    if upper not in QUANTS:
        raise UsageError(f"unknown quantization {value!r}", hint=f"choose one of {', '.join(QUANTS)}")
    return upper


def normalize_mmproj_type(value: str) -> str:
    lower = value.strip().lower()
    if lower not in MMPROJ_TYPES:
        raise UsageError(f"unknown projector type {value!r}", hint=f"choose one of {', '.join(MMPROJ_TYPES)}")
    return lower


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"invalid model name {name!r}", hint="use letters, digits, '.', '_' and '-' (at most 64)")
    return name


def _type_in(filename: str | None, known: tuple[str, ...], prefix: str) -> str | None:
    """The type a converted file name carries (thyme-7b-Q4_K_M.gguf -> Q4_K_M), if any."""
    if not filename or not filename.startswith(prefix) or not filename.endswith(".gguf"):
        return None
    tail = filename[len(prefix) : -len(".gguf")]
    return next((k for k in known if k.lower() == tail.lower()), None)


def request_for_spec(
    spec: ModelSpec, *, quant: str | None = None, mmproj_type: str | None = None, keep_download: bool = False
) -> ConvertRequest:
    """The conversion that produces SPEC's files (or, with QUANT / MMPROJ_TYPE, another variant of it)."""
    if not spec.needs_conversion:
        raise UsageError(f"{spec.name} is a ready GGUF, not a model thyme converts")
    wanted = normalize_quant(quant) if quant else _type_in(spec.model_file, QUANTS, f"{spec.name}-") or DEFAULT_QUANT
    proj = (
        normalize_mmproj_type(mmproj_type)
        if mmproj_type
        else _type_in(spec.mmproj_file, MMPROJ_TYPES, f"mmproj-{spec.name}-") or DEFAULT_MMPROJ
    )
    option = f" --quant {wanted}" if quant else ""
    return ConvertRequest(
        name=check_name(spec.name),
        repo=spec.repo if spec.source_dir is None else None,
        revision=spec.revision or "main",
        source_dir=spec.source_dir,
        quant=wanted,
        mmproj_type=proj,
        keep_download=keep_download,
        resume_command=f"thyme models pull {spec.name}{option}",
    )


# ----------------------------------------------------------------------------------------- state


class _State:
    """Which phases of one model's conversion are finished, and with what inputs (a JSON file)."""

    def __init__(self, path: Path, source_id: str) -> None:
        self.path = path
        self.source_id = source_id
        self.discarded: str | None = None
        self.done: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if data.get("version") == STATE_VERSION and data.get("source") == source_id:
            self.done = data.get("done", {})
        elif data.get("source"):
            self.discarded = str(data["source"])

    def finished(self, phase: str, key: dict[str, Any], *outputs: Path) -> dict[str, Any] | None:
        record = self.done.get(phase)
        if record is None or record.get("key") != key or not all(p.is_file() for p in outputs):
            return None
        return record

    def mark(self, phase: str, key: dict[str, Any], **extra: Any) -> None:
        self.done[phase] = {"key": key, **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"version": STATE_VERSION, "source": self.source_id, "done": self.done}, indent=2),
            encoding="utf-8",
        )
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------- disk


def estimate_output_bytes(weights_bytes: int, dtype_bytes: int, quant: str, mmproj_type: str) -> dict[str, int]:
    """Sizes the phases write, from the checkpoint's weight bytes (conservative: vision counted twice)."""
    bytes16 = weights_bytes * 2 // max(dtype_bytes, 1)
    return {
        "text": bytes16 * 2 if quant == "F32" else bytes16,
        "quantize": 0 if quant in FLOAT_TYPES else int(bytes16 * _BITS[quant] / 16),
        "mmproj": int(bytes16 * _MMPROJ_SHARE * {"f32": 2.0, "f16": 1.0, "q8_0": 0.54}[mmproj_type]),
    }


def check_free_space(needs: list[tuple[Path, int, str]], name: str) -> None:
    """Refuse before writing when the disks cannot hold what every phase will write (plus a margin)."""
    by_device: dict[int, list[tuple[Path, int, str]]] = {}
    for where, need, what in needs:
        if need > 0:
            by_device.setdefault(nearest_existing(where).stat().st_dev, []).append((where, need, what))
    for items in by_device.values():
        need = sum(n for _, n, _ in items)
        free = shutil.disk_usage(nearest_existing(items[0][0])).free
        if not fits(need, free):
            parts = ", ".join(f"{human_size(n)} {what} in {where}" for where, n, what in items)
            raise DiskSpaceError(
                f"not enough disk space to convert {name}: {parts}; {human_size(free)} free",
                hint="free some space, or move THYME_HOME (converted models) or HF_HOME (downloads) to a bigger disk",
            )


# ----------------------------------------------------------------------------------------- pipeline


class _Pipeline:
    """Runs the phases of one ConvertRequest inside <data dir>/models/NAME/.convert/."""

    def __init__(self, req: ConvertRequest, display: PhaseDisplay) -> None:
        self.req = req
        self.show = display
        self.out_dir = paths.local_models_dir() / req.name
        self.work = self.out_dir / ".convert"
        self.quantized = req.quant not in FLOAT_TYPES
        self.text_out = self.work / (f"text-{req.name}-16bit.gguf" if self.quantized else req.model_file)
        self.model_out = self.work / req.model_file
        self.mmproj_out = self.work / req.mmproj_file

    def run(self) -> Converted:
        from thyme_cli.models.convert.env import ensure_converter

        state, fetch = self._prepare()  # cheap checks and the disk check come before any big write
        converter = ensure_converter(self.show.note)
        folder = fetch()
        self._text(converter.worker_cmd, folder, state)
        self._mmproj(converter.worker_cmd, folder, state)
        if self.quantized:
            self._quantize(state)
        self._verify()
        files = self._install(state)
        download = state.done.get("download")
        return Converted(files, str(download["key"]["commit"]) if download else None)

    # -- phase 1: the source, checked; the disk, checked; then (Hub) the download
    def _prepare(self) -> tuple[_State, Callable[[], Path]]:
        if self.req.source_dir is not None:
            return self._local_source()
        return self._hub_source()

    def _local_source(self) -> tuple[_State, Callable[[], Path]]:
        from thyme_cli.models.convert.source import check_checkpoint, fingerprint

        assert self.req.source_dir is not None
        folder = self.req.source_dir.expanduser().resolve()
        self.show.begin(f"check the checkpoint in {folder}")
        ckpt = check_checkpoint(folder)
        state = self._open_state(f"dir:{folder}#{fingerprint(folder)}")
        self._check_disk(ckpt.weights_bytes, ckpt.dtype_bytes, state, download=0)
        self.show.end(f"Qwen2.5-VL, {human_size(ckpt.weights_bytes)} of weights")
        return state, lambda: folder

    def _hub_source(self) -> tuple[_State, Callable[[], Path]]:
        from thyme_cli.models.convert.source import resolve_snapshot

        assert self.req.repo is not None
        state = self._open_state(f"hub:{self.req.repo}@{self.req.revision}")
        title = f"download {self.req.source_label}"
        done = state.done.get("download")
        if done is not None:
            folder = Path(done["folder"])
            if all((folder / f).is_file() for f in done["files"]):
                self.show.skip(title, f"done earlier (commit {str(done['key']['commit'])[:12]})")
                self._check_disk(int(done["weights_bytes"]), int(done["dtype_bytes"]), state, download=0)
                return state, lambda: folder
        if hub_cache.offline_mode():
            from thyme_cli.models.hub.errors import offline_error

            raise offline_error(self.req.source_label)
        self.show.begin(title)
        from thyme_cli.models.hub.fetch import remaining_bytes
        from thyme_cli.ui.hub_progress import Silent

        snap = resolve_snapshot(self.req.repo, self.req.revision, Silent())
        self._check_disk(
            snap.weights_bytes, snap.dtype_bytes, state, download=sum(remaining_bytes(r) for r in snap.remotes)
        )
        return state, lambda: self._download(snap, state)

    def _download(self, snap: HubSnapshot, state: _State) -> Path:
        from thyme_cli.models.convert.source import download_snapshot

        # Files whose bytes this conversion brings (deleted again at the end); recorded before the
        # first byte, so an interrupted download still counts them as ours when it resumes.
        started = state.finished("fetching", {"commit": snap.commit})
        ours = sorted(set(snap.new_files) | set((started or {}).get("downloaded", [])))
        state.mark("fetching", {"commit": snap.commit}, downloaded=ours)
        bar = self.show.downloads()
        try:
            folder = download_snapshot(snap, bar, resume_hint=f"run `{self.req.resume_command}` again to resume")
        finally:
            bar.close()
        state.mark(
            "download",
            {"commit": snap.commit},
            folder=str(folder),
            files=[r.filename for r in snap.remotes],
            downloaded=ours,
            weights_bytes=snap.weights_bytes,
            dtype_bytes=snap.dtype_bytes,
        )
        self.show.end(f"{len(snap.remotes)} files, commit {snap.commit[:12]}")
        return folder

    def _open_state(self, source_id: str) -> _State:
        state = _State(self.work / "state.json", source_id)
        if state.discarded:
            self.show.note(f"discarding an unfinished conversion of {self.req.name} from {state.discarded}")
            shutil.rmtree(self.work, ignore_errors=True)
        elif set(state.done) - {"fetching"}:
            finished = ", ".join(p for p in state.done if p != "fetching")
            self.show.note(f"resuming the conversion of {self.req.name} (finished: {finished})")
        return state

    def _check_disk(self, weights_bytes: int, dtype_bytes: int, state: _State, *, download: int) -> None:
        from thyme_cli.models.convert.env import SETUP_DISK_BYTES, find_converter, venv_dir

        sizes = estimate_output_bytes(weights_bytes, dtype_bytes, self.req.quant, self.req.mmproj_type)
        left = sum(n for phase, n in sizes.items() if phase not in state.done)
        converter = 0 if find_converter() is not None else SETUP_DISK_BYTES
        check_free_space(
            [
                (hub_cache.hub_cache_dir(), download, "to download"),
                (self.out_dir, left, "of GGUF files"),
                (venv_dir(), converter, "for the converter environment"),
            ],
            self.req.name,
        )

    # -- phases 2-4
    def _text_key(self) -> dict[str, Any]:
        return {"outtype": "auto" if self.quantized else self.req.quant.lower(), "pre": self.req.pre_tokenizer}

    def _text(self, worker: Any, folder: Path, state: _State) -> None:
        title = "convert the language model to GGUF" + ("" if self.quantized else f" ({self.req.quant})")
        key = self._text_key()
        if state.finished("text", key, self.text_out) or state.finished(
            "quantize", {**key, "quant": self.req.quant}, self.model_out
        ):
            self.show.skip(title, "done earlier")
            return
        self.show.begin(title)
        args = ["convert", str(folder), "--outfile", str(self.text_out), "--outtype", key["outtype"]]
        if self.req.pre_tokenizer:
            args += ["--pre-tokenizer", self.req.pre_tokenizer]
        self._step(worker(*args), "text", "converting the language model", "bytes")
        state.mark("text", key)
        self.show.end(human_size(self.text_out.stat().st_size))

    def _mmproj(self, worker: Any, folder: Path, state: _State) -> None:
        title = f"convert the vision projector to GGUF ({self.req.mmproj_type})"
        key = {"outtype": self.req.mmproj_type}
        if state.finished("mmproj", key, self.mmproj_out):
            self.show.skip(title, "done earlier")
            return
        self.show.begin(title)
        args = [
            "convert",
            str(folder),
            "--outfile",
            str(self.mmproj_out),
            "--outtype",
            self.req.mmproj_type,
            "--mmproj",
        ]
        self._step(worker(*args), "mmproj", "converting the vision projector", "bytes")
        state.mark("mmproj", key)
        self.show.end(human_size(self.mmproj_out.stat().st_size))

    def _quantize(self, state: _State) -> None:
        title = f"quantize the language model to {self.req.quant}"
        key = {**self._text_key(), "quant": self.req.quant}
        if state.finished("quantize", key, self.model_out):
            self.show.skip(title, "done earlier")
            return
        self.show.begin(title)
        cmd = [
            sys.executable,
            "-m",
            "thyme_cli.models.convert.quantize",
            "quantize",
            str(self.text_out),
            str(self.model_out),
            self.req.quant,
        ]
        self._step(cmd, "quantize", f"quantizing to {self.req.quant}", "tensors")
        state.mark("quantize", key)
        freed = self.text_out.stat().st_size
        self.text_out.unlink()
        self.show.end(
            f"{human_size(self.model_out.stat().st_size)}; removed the 16-bit intermediate ({human_size(freed)})"
        )

    # -- phases 5-6
    def _verify(self) -> None:
        self.show.begin("check that the pair loads in llama.cpp")
        cmd = [
            sys.executable,
            "-m",
            "thyme_cli.models.convert.quantize",
            "verify",
            str(self.model_out),
            str(self.mmproj_out),
        ]
        events = self._step(cmd, "verify", "the load check of the converted files", "tensors")
        got = next((e for e in events if e.get("event") == "verified"), {})
        self.show.end(f"{got.get('n_params', '?')} parameters, an image became {got.get('image_tokens', '?')} tokens")

    def _install(self, state: _State) -> ModelFiles:
        self.show.begin(f"install into {self.out_dir}")
        final_model, final_mmproj = self.out_dir / self.req.model_file, self.out_dir / self.req.mmproj_file
        os.replace(self.model_out, final_model)
        os.replace(self.mmproj_out, final_mmproj)
        freed = 0
        download = state.done.get("download")
        if download and not self.req.keep_download and download.get("downloaded"):
            assert self.req.repo is not None
            freed += hub_cache.remove_files(self.req.repo, set(download["downloaded"])).freed
        shutil.rmtree(self.work, ignore_errors=True)
        self.show.end(f"removed intermediates and downloads ({human_size(freed)})" if freed else "")
        return ModelFiles(model=final_model, mmproj=final_mmproj)

    def _step(self, cmd: list[str], log_name: str, what: str, unit: str) -> list[dict[str, Any]]:
        from thyme_cli.models.convert.steps import run_step

        return run_step(
            cmd,
            self.work / f"{log_name}.log",
            what=what,
            on_event=self.show.on_event(unit),
            hint=f"fix the cause, then run `{self.req.resume_command}` to resume",
        )


@dataclass(frozen=True)
class Converted:
    """The installed pair, and the Hub commit it was converted from (None for a local folder)."""

    files: ModelFiles
    commit: str | None


def remove_superseded(name: str, files: ModelFiles) -> int:
    """Delete other variants of NAME (an earlier --quant) once the registry points at FILES."""
    freed = 0
    for path in (paths.local_models_dir() / name).glob("*.gguf"):
        ours = path.name.startswith((f"{name}-", f"mmproj-{name}-"))
        if ours and path not in (files.model, files.mmproj):
            freed += path.stat().st_size
            path.unlink()
    return freed


def convert(req: ConvertRequest, *, progress: bool = True) -> Converted:
    """Run (or resume) the conversion REQ describes; return the two installed files."""
    from filelock import FileLock, Timeout

    check_name(req.name)
    phases = 5 + (1 if req.quant not in FLOAT_TYPES else 0)
    display = PhaseDisplay(progress, phases)
    lock_dir = paths.local_models_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f".{req.name}.lock"))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        raise ThymeError(
            f"{req.name} is being converted by another thyme process",
            hint="wait for it to finish (or stop it), then run the command again",
        ) from None
    try:
        return _Pipeline(req, display).run()
    except KeyboardInterrupt:
        raise ThymeError(
            f"conversion of {req.name} interrupted; finished phases are kept",
            hint=f"run `{req.resume_command}` to resume",
            exit_code=130,
        ) from None
    finally:
        display.close()
        lock.release()


def install_converted(
    spec: ModelSpec,
    *,
    quant: str | None = None,
    mmproj_type: str | None = None,
    keep_download: bool = False,
    progress: bool = True,
) -> ModelFiles:
    """`thyme models pull` of a needs_conversion model (thyme-7b): convert it, pointing the registry at the result."""
    req = request_for_spec(spec, quant=quant, mmproj_type=mmproj_type, keep_download=keep_download)
    if (req.model_file, req.mmproj_file) == (spec.model_file, spec.mmproj_file):
        files = installed_files(spec)
        if files is not None:
            return files
    files = convert(req, progress=progress).files
    if (req.model_file, req.mmproj_file) != (spec.model_file, spec.mmproj_file):
        upsert_user_model(spec.name, {"model_file": req.model_file, "mmproj_file": req.mmproj_file})
    remove_superseded(spec.name, files)
    return files


@dataclass(frozen=True)
class NewModel:
    """What `thyme models convert` registers besides the files."""

    protocol: str = "generic"
    n_ctx: int = 16384
    description: str | None = None


def parse_source(source: str) -> tuple[str | None, Path | None]:
    """A local checkpoint folder, or a Hub repo id (org/name); anything else is a usage error."""
    from thyme_cli.models.convert.source import REPO_ID_RE

    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{source} is a file; give the checkpoint's folder (with config.json)")
        return None, path.resolve()
    if REPO_ID_RE.fullmatch(source):
        return source, None
    raise UsageError(f"{source}: no such folder, and not a Hub repo id (org/name)")


def default_name(repo: str | None, folder: Path | None) -> str:
    base = repo.split("/")[-1] if repo else (folder.name if folder else "model")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.").lower()[:64] or "model"


def convert_new(
    source: str,
    *,
    name: str | None,
    revision: str,
    quant: str,
    mmproj_type: str,
    keep_download: bool,
    pre_tokenizer: str | None,
    new: NewModel,
    progress: bool = True,
) -> tuple[ModelSpec, ModelFiles]:
    """`thyme models convert`: convert any Qwen2.5-VL checkpoint and register it under NAME."""
    from thyme_cli.models.spec import PROTOCOLS

    repo, folder = parse_source(source)
    name = check_name(name or default_name(repo, folder))
    if new.protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    _check_name_is_free(name)
    req = ConvertRequest(
        name=name,
        repo=repo,
        revision=revision,
        source_dir=folder,
        quant=normalize_quant(quant),
        mmproj_type=normalize_mmproj_type(mmproj_type),
        keep_download=keep_download,
        pre_tokenizer=pre_tokenizer,
        resume_command="",
    )
    req = replace(req, resume_command=_convert_command(source, req, new))
    result = convert(req, progress=progress)
    upsert_user_model(name, _new_model_entry(req, new, result.commit))
    return load_registry().get(name), result.files


def _check_name_is_free(name: str) -> None:
    """A new model may not take a registered name (a needs_conversion one is converted by `pull`)."""
    registry = load_registry()
    if name in registry.models:
        existing = registry.models[name]
        hint = (
            f"`thyme models pull {name}` converts it (add --quant TYPE for another quantization)"
            if existing.needs_conversion
            else "choose another --name"
        )
        raise UsageError(f"a model named {name!r} already exists", hint=hint)


def _convert_command(source: str, req: ConvertRequest, new: NewModel) -> str:
    """The `thyme models convert` command that resumes REQ: SOURCE and every option not at its default."""
    given = {
        "--name": req.name,
        "--revision": req.revision if req.repo and req.revision != "main" else None,
        "--quant": req.quant if req.quant != DEFAULT_QUANT else None,
        "--mmproj-type": req.mmproj_type if req.mmproj_type != DEFAULT_MMPROJ else None,
        "--pre-tokenizer": req.pre_tokenizer,
        "--protocol": new.protocol if new.protocol != "generic" else None,
        "--ctx": str(new.n_ctx) if new.n_ctx != NewModel.n_ctx else None,
    }
    words = ["thyme", "models", "convert", source, *(w for k, v in given.items() if v for w in (k, v))]
    return shlex.join([*words, *(["--keep-download"] if req.keep_download else [])])


def _new_model_entry(
    req: ConvertRequest, new: NewModel, commit: str | None
) -> dict[str, str | int | float | bool | Path]:
    """The user's [models.NAME] entry of a converted model: where it came from, so `pull` can redo it."""
    values: dict[str, str | int | float | bool | Path] = {
        "description": new.description or f"converted from {req.source_label} ({req.quant})",
        "model_file": req.model_file,
        "mmproj_file": req.mmproj_file,
        "needs_conversion": True,
        "protocol": new.protocol,
        "n_ctx": new.n_ctx,
        "image_min_tokens": 4,
        "image_max_tokens": 3072,
    }
    if req.repo:
        values.update(repo=req.repo, revision=commit or req.revision)
    else:
        assert req.source_dir is not None
        values["source_dir"] = req.source_dir
    return values
