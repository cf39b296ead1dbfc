"""Any GGUF vision repository on the Hub, named the way Ollama and llama.cpp name it.

``hf.co/ORG/REPO[:QUANT]`` (and its spellings) becomes a ModelSpec whose model and projector are
picked from the repository's file list with llama.cpp's rule (docs/models.md). The selection is pure;
only `resolve_reference` asks the Hub for the list.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thyme_cli.errors import DownloadError, UsageError

if TYPE_CHECKING:
    from thyme_cli.models.spec import ModelSpec

DEFAULT_TAGS = ("Q4_K_M", "Q8_0")
HOSTS = ("hf.co/", "huggingface.co/", "www.huggingface.co/")
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Bit width in a quant name: Q4_K_M, IQ4_XS, Q8_0, TQ1_0 -> the digit; F16, BF16, FP16, F32 -> 16/32.
_QUANT_BITS_RE = re.compile(r"(?:^|[^a-z0-9])(?:[it]?q(\d+)|b?fp?(\d+))(?=[^a-z0-9]|_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    """A parsed reference: the repository and the quant tag the user asked for (None: the default)."""

    repo: str
    quant: str | None = None

    def name(self, tag: str | None) -> str:
        """The name thyme registers a pulled reference under: hf.co/ORG/REPO:TAG."""
        return f"hf.co/{self.repo}" + (f":{tag}" if tag else "")


def parse_reference(text: str) -> HubRef | None:
    """The reference TEXT names, or None when it is not one (a plain registry name has no '/')."""
    value = text.strip()
    for scheme in ("https://", "http://"):
        if value.lower().startswith(scheme):
            value = value[len(scheme) :]
    lowered = value.lower()
    for host in HOSTS:
        if lowered.startswith(host):
            value = value[len(host) :]
            break
    repo, _, quant = value.partition(":")
    repo = repo.strip("/")
    if not _REPO_RE.fullmatch(repo):
        return None
    if quant and not _TAG_RE.fullmatch(quant):
        raise UsageError(f"{text!r}: the quant tag {quant!r} is not valid", hint="e.g. hf.co/ORG/REPO:Q4_K_M")
    return HubRef(repo=repo, quant=quant or None)


def split_part(path: str) -> tuple[int, int] | None:
    """(part, total) of a split GGUF (`name-00001-of-00003.gguf`), else None."""
    m = _SPLIT_RE.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None


def split_siblings(path: str) -> list[str]:
    """Every part of the split model whose first part is PATH (just [PATH] when it is not split)."""
    m = _SPLIT_RE.search(path)
    if m is None:
        return [path]
    total = int(m.group(2))
    head = path[: m.start()]
    return [f"{head}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


def _is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def _is_model_candidate(path: str) -> bool:
    name = posixpath.basename(path).lower()
    if not _is_gguf(path) or "mmproj" in name or "imatrix" in name:
        return False
    part = split_part(path)
    return part is None or part[0] == 1


def matches_tag(path: str, tag: str) -> bool:
    """Whether PATH carries TAG followed by '.' or '-' (case-insensitive), llama.cpp's test."""
    return re.search(re.escape(tag) + r"[.-]", path, re.IGNORECASE) is not None


def select_model_file(paths: list[str], quant: str | None) -> tuple[str, str | None]:
    """(model file, the tag it matched) from a repository's file list; DownloadError when none fits."""
    candidates = [p for p in paths if _is_model_candidate(p)]
    if not candidates:
        raise DownloadError(
            "the repository has no GGUF model file (only projectors, imatrix data or nothing)",
            hint="pick a repository whose files end in .gguf",
        )
    tags = (quant,) if quant else DEFAULT_TAGS
    for tag in tags:
        for path in candidates:
            if matches_tag(path, tag):
                return path, tag.upper()
    if quant:
        available = sorted({t for p in candidates if (t := quant_of(p))})
        raise DownloadError(
            f"no GGUF file for quant {quant!r}" + (f" (available: {', '.join(available)})" if available else ""),
            hint="give one of the available tags after ':' or --model-file FILE",
        )
    return candidates[0], None


def quant_of(path: str) -> str | None:
    """The quant named in a file name (Q4_K_M, IQ4_XS, F16, ...), upper-case, or None."""
    name = posixpath.basename(path)
    m = re.search(r"(?:^|[-_.])((?:[IT]?Q\d+(?:_[A-Z0-9]+)*)|B?F(?:P)?\d+)(?=[-.])", name, re.IGNORECASE)
    return m.group(1).upper() if m else None


def quant_bits(text: str) -> int | None:
    """The bit width a quant tag or file name stands for: Q4_K_M -> 4, Q8_0 -> 8, f16 -> 16."""
    m = _QUANT_BITS_RE.search(posixpath.basename(text))
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


def select_mmproj(paths: list[str], model_path: str, bits: int | None) -> str | None:
    """The projector for MODEL_PATH: deepest folder first (the model's own, then its ancestors),
    then the closest bit width to BITS; file-list order breaks ties. None when the repo has none."""
    projectors = [p for p in paths if _is_gguf(p) and "mmproj" in posixpath.basename(p).lower()]
    folder = posixpath.dirname(model_path)
    while True:
        here = [p for p in projectors if posixpath.dirname(p) == folder]
        if here:
            if bits is None:
                return here[0]
            return min(here, key=lambda p: abs((quant_bits(p) or 1000) - bits))
        if not folder:
            return None
        folder = posixpath.dirname(folder)


@dataclass(frozen=True)
class Selection:
    """What a reference resolves to in one repository listing."""

    model_file: str
    mmproj_file: str
    tag: str | None
    size_bytes: int | None


def select_files(
    files: dict[str, int], quant: str | None, *, model_file: str | None = None, mmproj_file: str | None = None
) -> Selection:
    """Apply the rule (or the user's --model-file / --mmproj-file) to FILES (path -> size, in list order)."""
    paths = list(files)
    tag: str | None
    if model_file is not None:
        if model_file not in files:
            raise DownloadError(f"the repository has no file {model_file!r}", hint="check --model-file")
        tag = quant.upper() if quant else quant_of(model_file)
    else:
        model_file, tag = select_model_file(paths, quant)
    if mmproj_file is not None:
        if mmproj_file not in files:
            raise DownloadError(f"the repository has no file {mmproj_file!r}", hint="check --mmproj-file")
    else:
        bits = quant_bits(tag) if tag else quant_bits(model_file)
        found = select_mmproj(paths, model_file, bits)
        if found is None:
            raise DownloadError(
                f"the repository has no vision projector (mmproj) next to {model_file}",
                hint="thyme needs a vision model; pass --mmproj-file FILE if the projector is named differently",
            )
        mmproj_file = found
    parts = split_siblings(model_file)
    missing = [p for p in parts if p not in files]
    if missing:
        raise DownloadError(f"split model {model_file} lacks part(s): {', '.join(missing)}")
    size = sum(files.get(p, 0) for p in [*parts, mmproj_file])
    return Selection(
        model_file=model_file, mmproj_file=mmproj_file, tag=tag or quant_of(model_file), size_bytes=size or None
    )


def resolve_reference(
    text: str,
    *,
    model_file: str | None = None,
    mmproj_file: str | None = None,
    protocol: str = "generic",
    revision: str = "main",
) -> ModelSpec:
    """Ask the Hub for REPO's file list and build the ModelSpec the reference TEXT stands for."""
    from thyme_cli.models.hub import cache as hub_cache
    from thyme_cli.models.spec import PROTOCOLS, ModelSpec

    ref = parse_reference(text)
    if ref is None:
        raise UsageError(f"{text!r} is not a Hub reference", hint="write hf.co/ORG/REPO[:QUANT]")
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    if hub_cache.offline_mode():
        from thyme_cli.models.hub.errors import offline_error

        raise offline_error(text)
    from thyme_cli.models.hub.fetch import list_files

    selection = select_files(list_files(ref.repo, revision), ref.quant, model_file=model_file, mmproj_file=mmproj_file)
    return ModelSpec(
        name=ref.name(selection.tag),
        description=f"{ref.repo} ({selection.tag or posixpath.basename(selection.model_file)}), from the Hub",
        repo=ref.repo,
        model_file=selection.model_file,
        mmproj_file=selection.mmproj_file,
        revision=None if revision == "main" else revision,
        size_gb=round(selection.size_bytes / 1e9, 3) if selection.size_bytes else None,
        protocol="thyme" if protocol == "thyme" else "generic",
        source="user",
        extra={"reference": ref.name(selection.tag)},
    )


def find_pulled(models: dict[str, ModelSpec], text: str) -> ModelSpec | None:
    """A registered (pulled) entry for the reference TEXT, so a pulled model needs no network."""
    ref = parse_reference(text)
    if ref is None:
        return None
    by_name = {name.lower(): spec for name, spec in models.items()}
    if ref.quant:
        return by_name.get(ref.name(ref.quant).lower())
    for tag in DEFAULT_TAGS:
        if (spec := by_name.get(ref.name(tag).lower())) is not None:
            return spec
    if (spec := by_name.get(ref.name(None).lower())) is not None:
        return spec
    prefix = ref.name(None).lower() + ":"
    return next((s for n, s in by_name.items() if n.startswith(prefix)), None)
