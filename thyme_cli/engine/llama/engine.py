"""The llama.cpp engine: one loaded model pair, one live multimodal context per question.

``LlamaEngine.load`` loads the GGUF pair once; ``open()`` starts a question (the only place the KV
cache is cleared). A ``LlamaConversation`` evaluates only what each feed adds and generates with
adaptive temperature until a stop; the design is in docs/engine.md.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from thyme_cli.defaults import CONTEXT_FULL_HINT, TOP_K, TOP_P
from thyme_cli.engine.base import (
    IMAGE_MARKER,
    Conversation,
    Counters,
    Engine,
    Generation,
    GenerationStopReason,
)
from thyme_cli.engine.images import ImageSizing, PreparedImage, load_image
from thyme_cli.engine.llama.chat import (
    QWEN_DEFAULT_SYSTEM,
    ChatMLRenderer,
    Message,
    Renderer,
    TemplateRenderer,
    check_markers,
    count_markers,
)
from thyme_cli.engine.llama.context import LiveContext, ProgressFn, SharedPrefix, StreamItem
from thyme_cli.engine.llama.memory import check_fits
from thyme_cli.engine.llama.native import Native, ProjectorInfo, inspect_files
from thyme_cli.engine.llama.parallel import StepRounds, sample_from_logits, token_logprob
from thyme_cli.engine.llama.prompt_state import PromptStore
from thyme_cli.engine.llama.sampling import AtsSamplers
from thyme_cli.engine.settings import EngineOptions, SamplingOptions
from thyme_cli.engine.textstream import TurnScanner, Utf8Pieces, without_observations
from thyme_cli.errors import EngineError, UsageError

__all__ = ["EngineOptions", "LlamaConversation", "LlamaCounters", "LlamaEngine", "SamplingOptions"]

# Qwen2-VL / Qwen2.5-VL speak ChatML with a default system prompt; Thyme is a Qwen2.5-VL.
_CHATML_PROJECTORS = frozenset({"qwen2vl_merger", "qwen2.5vl_merger"})
# Hugging Face processor defaults, used when the model entry gives no token limits.
_QWEN_MIN_TOKENS, _QWEN_MAX_TOKENS = 4, 16384


@dataclass
class LlamaCounters(Counters):
    """base.Counters plus what only this engine can tell."""

    native_s: float = 0.0  # seconds inside llama.cpp / libmtmd calls (the rest is Python)
    image_load_s: float = 0.0  # seconds reading and resizing image files (Pillow)
    rollbacks: int = 0  # times a re-rendered prompt diverged and the context tail was re-evaluated
    retokenized: int = 0  # cells evaluated again because fed text joined the text before it into other tokens
    prompt_state_loaded: bool = False  # the system prompt's KV state came from disk (prompt_state)
    # Sum and count of the log-probabilities of generated tokens (parallel sequences only: --samples
    # ranks trajectories by their mean).
    logprob_sum: float = 0.0
    logprob_tokens: int = 0


def _read_template(path: Path) -> str:
    """A --chat-template file's text; UsageError when it cannot be read."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"chat template {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"chat template {path}: cannot read it ({e})") from None
    if not text.strip():
        raise UsageError(f"chat template {path} is empty")
    return text


def _image_sizing(projector: ProjectorInfo, options: EngineOptions) -> ImageSizing:
    lo, hi = options.token_limits
    mode = options.image_resize
    if mode == "auto":
        mode = "qwen" if projector.qwen_family else "none"
    if mode == "none":
        return ImageSizing()
    if not projector.qwen_family:
        raise EngineError(
            f"image_resize='qwen' needs a Qwen-VL projector; this one is {projector.projector_type!r}",
            hint="use image_resize='auto' or 'none'",
        )
    max_tokens = hi or _QWEN_MAX_TOKENS
    min_tokens = min(lo or _QWEN_MIN_TOKENS, max_tokens)
    return ImageSizing(factor=projector.resize_factor, min_tokens=min_tokens, max_tokens=max_tokens)


def _offloads(options: EngineOptions) -> bool:
    """True when this build puts layers on a GPU with these options (as Native decides)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload()) and options.n_gpu_layers != 0


class LlamaEngine:
    """A loaded model + projector. Load once, ``open()`` once per question (cheap)."""

    concurrent = False  # one llama.cpp context: one conversation at a time

    def __init__(
        self,
        native: Native,
        renderer: Renderer,
        sizing: ImageSizing,
        options: EngineOptions,
        sampling: SamplingOptions,
        name: str,
    ) -> None:
        self._native = native
        self.renderer = renderer
        self.image_sizing = sizing
        self.options = options
        self.sampling = sampling
        self.name = name
        self._samplers = AtsSamplers(sampling, native.n_vocab)
        self._current: LlamaConversation | None = None
        self._prefix: SharedPrefix | None = None  # the last question's system prompt, still in the KV cache
        self.prompt_store: PromptStore | None = None  # the system prompt's state on disk (prompt_state)
        # Every llama.cpp call of a conversation runs under this lock; with several sequences
        # (options.n_seq > 1) conversations run in threads and decode together (engine/parallel.py).
        self.lock = threading.RLock()
        self.n_seq = native.n_seq_max
        self._rounds: StepRounds | None = None
        self._free_seqs: list[int] = list(range(self.n_seq))
        self._running: dict[int, LlamaConversation] = {}
        self._prefix_seq = 0
        self._encode_lock = threading.Lock()
        self.prefix_ready = threading.Event()  # set when a running conversation published its prefix
        if self.n_seq > 1:
            self.concurrent = True
            self._rounds = StepRounds(native, self.lock)

    @classmethod
    def load(
        cls,
        model_path: Path | str,
        mmproj_path: Path | str,
        *,
        options: EngineOptions | None = None,
        sampling: SamplingOptions | None = None,
    ) -> LlamaEngine:
        """Load the pair; EngineError with a one-line message and hint when anything is wrong."""
        options = options or EngineOptions()
        sampling = sampling or SamplingOptions()
        model_path, mmproj_path = Path(model_path).expanduser(), Path(mmproj_path).expanduser()
        projector = inspect_files(model_path, mmproj_path)
        sizing = _image_sizing(projector, options)
        limits = (sizing.min_tokens, sizing.max_tokens) if sizing.resizes else options.token_limits
        check_fits(model_path, mmproj_path, options, on_gpu=_offloads(options))
        native = Native(model_path, mmproj_path, options, projector, limits)
        try:
            renderer = cls._renderer(native, options)
        except BaseException:
            native.close()
            raise
        engine = cls(native, renderer, sizing, options, sampling, name=f"llama.cpp:{model_path.stem}")
        engine.prompt_store = PromptStore.for_engine(model_path, mmproj_path, options, native)
        return engine

    @staticmethod
    def _renderer(native: Native, options: EngineOptions) -> Renderer:
        qwen = native.projector.projector_type in _CHATML_PROJECTORS
        chatml_tokens = len(native.tokenize("<|im_start|>")) == 1 and len(native.tokenize("<|im_end|>")) == 1
        fmt = options.chat_format
        if options.chat_template_file is not None:
            return TemplateRenderer(
                _read_template(options.chat_template_file), bos_token=native.bos_text, eos_token=native.eos_text
            )
        if fmt not in ("auto", "chatml", "template"):
            from thyme_cli.engine.llama.builtin_chat import BuiltinRenderer

            return BuiltinRenderer(fmt)
        if fmt == "auto":
            template = native.chat_template
            speaks_chatml = chatml_tokens and (template is None or "<|im_start|>" in template)
            fmt = "chatml" if speaks_chatml and (qwen or template is None) else "template"
        if fmt == "chatml":
            if not chatml_tokens:
                raise EngineError(
                    "chat_format='chatml' but this model has no <|im_start|>/<|im_end|> tokens",
                    hint="use chat_format='template' or 'auto'",
                )
            return ChatMLRenderer(QWEN_DEFAULT_SYSTEM if qwen else None)
        if native.chat_template is None:
            raise EngineError(
                "the model has no chat template and does not speak ChatML",
                hint="name its prompt format with --chat-format (e.g. gemma, llama3, mistral-v7) "
                "or pass a Jinja template with --chat-template FILE",
            )
        return TemplateRenderer(native.chat_template, bos_token=native.bos_text, eos_token=native.eos_text)

    # --- the Engine protocol --------------------------------------------------------------------

    def open(self, sampling: SamplingOptions | None = None) -> LlamaConversation:
        """Start a new question: the previous conversation ends and the KV cache is emptied, except
        for the previous question's system prompt, which the new one reuses when it is the same
        (the first feed cuts back to the common prefix otherwise)."""
        self._check()
        if self.n_seq > 1:
            return self._open_parallel(sampling)
        if self._current is not None:
            self._current.close()
        prefix, self._prefix = self._prefix, None
        if prefix is None:
            self._native.clear()
        if sampling is None or sampling == self.sampling:
            samplers, own = self._samplers, False
        else:
            samplers, own = AtsSamplers(sampling, self._native.n_vocab), True
        samplers.reset()
        self._current = LlamaConversation(self, samplers, own_samplers=own)
        if prefix is not None:
            self._current._live.adopt(prefix)
        return self._current

    @contextlib.contextmanager
    def _encoding(self) -> Iterator[None]:
        """Around an image encode in a feed (which holds the engine lock): let the other
        sequences decode meanwhile; one encode at a time (libmtmd's output buffer is shared)."""
        self.lock.release()
        try:
            with self._encode_lock:
                yield
        finally:
            self.lock.acquire()

    def _publish(self, conversation: LlamaConversation) -> None:
        """Offer a running conversation's prefix (system prompt and image) to the next ones."""
        prefix = conversation._live.snapshot_prefix()
        if prefix is not None:
            self._prefix, self._prefix_seq = prefix, conversation._live.seq
            self.prefix_ready.set()

    def _open_parallel(self, sampling: SamplingOptions | None) -> LlamaConversation:
        """A conversation on a free sequence of the shared context; it starts from the last
        finished question's prefix (system prompt, maybe its image) when that sequence is idle."""
        with self.lock:
            if not self._free_seqs:
                raise EngineError(
                    f"all {self.n_seq} sequences of this context are in use",
                    hint="run at most as many questions at once as the engine has sequences",
                )
            seq = self._free_seqs.pop(0)
            samplers = AtsSamplers(sampling or self.sampling, self._native.n_vocab)
            conv = LlamaConversation(self, samplers, own_samplers=True, seq=seq)
            self._running[seq] = conv
            prefix, holder = self._prefix, self._prefix_seq
            owner = self._running.get(holder)
            usable = prefix is not None and (owner is None or owner._live.still_holds(prefix))
            if seq != holder or not usable:
                self._native.clear_seq(seq)
            if prefix is not None and usable:
                if seq != holder:
                    import llama_cpp

                    llama_cpp.llama_memory_seq_cp(self._native.mem, holder, seq, 0, prefix.pos)
                conv._live.adopt(prefix)
            return conv

    def close(self) -> None:
        """Free the model; the engine cannot be used afterwards. Safe to call twice."""
        if self._current is not None:
            self._current.close()
            self._current = None
        for conv in list(self._running.values()):
            conv.close()
        if self._rounds is not None:
            self._rounds.close()
            self._rounds = None
        if not self._native.closed:
            self._samplers.close()
            self._native.close()

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- extras ----------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._native.closed:
            raise EngineError("the engine was closed")

    @property
    def native(self) -> Native:
        return self._native

    @property
    def n_ctx(self) -> int:
        return self._native.n_ctx

    @property
    def chat_format(self) -> str:
        return self.renderer.name

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens parsed), e.g. for a logit bias."""
        self._check()
        return self._native.tokenize(text)

    def _released(self, conversation: LlamaConversation) -> None:
        if self._current is conversation:
            self._current = None
        seq = conversation._live.seq
        if self._running.get(seq) is conversation:
            del self._running[seq]
            self._free_seqs.append(seq)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(
    method: Callable[Concatenate[LlamaConversation, _P], _R],
) -> Callable[Concatenate[LlamaConversation, _P], _R]:
    """Run a conversation method under its engine's lock (other sequences share the context)."""

    @functools.wraps(method)
    def wrapper(self: LlamaConversation, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._engine.lock:
            return method(self, *args, **kwargs)

    return wrapper


class LlamaConversation:
    """One question's live context (see thyme_cli.engine.base.Conversation)."""

    def __init__(self, engine: LlamaEngine, samplers: AtsSamplers, *, own_samplers: bool, seq: int = 0) -> None:
        self._engine = engine
        self._native = engine.native
        self._samplers = samplers
        self._own_samplers = own_samplers
        self._renderer = engine.renderer
        self._counters = LlamaCounters()
        self._native_start = self._native.native_s
        self._live = LiveContext(
            self._native,
            self._counters,
            engine.image_sizing,
            reserve_tokens=engine.options.reserve_tokens,
            keep_embeddings=engine.renderer.name == "template",
        )
        if engine.n_seq > 1:  # one of several sequences: its share of the context, its own logits
            self._live.seq, self._live.keep_logits = seq, True
            self._live.n_ctx = self._native.n_ctx // engine.n_seq
            self._live.encode_guard = engine._encoding
        self._messages: list[Message] = []
        self._open: Message | None = None  # the assistant turn being written
        self._scanner = TurnScanner()
        self._utf8 = Utf8Pieces()
        self._closed = False
        self.last_tokens: list[int] = []
        self._checkpoints: list[tuple[int, list[Message], Message, TurnScanner]] = []
        self._retry_warm = False
        self._retry_samplers: AtsSamplers | None = None

    # --- feeding -----------------------------------------------------------------------------------

    def feed_system(self, text: str) -> None:
        """Set the system message; only as the first feed (it is evaluated with the first user turn)."""
        self._check()
        if self._messages or self._open is not None:
            raise EngineError("feed_system must be the first feed of a conversation")
        check_markers(text, (), "feed_system")
        self._messages.append(Message("system", text))

    @_locked
    def feed_user(self, text: str, images: Sequence[Path] = ()) -> None:
        """Close any open assistant turn, add a user turn and open the next assistant turn."""
        self._check()
        check_markers(text, images, "feed_user")
        messages = list(self._messages)
        if self._open is not None:
            self._finish_text()
            messages.append(self._open)
        first_turn = len(messages) == 1 and messages[0].role == "system"
        system = self._system_prefix(messages, text) if first_turn else ""
        system_mark = self._live.holds_beyond(system) if system else None
        if system_mark is not None:
            # The previous question left its system prompt and image here: keep the system prompt
            # in any case, and the image too when this question is about the same picture.
            self._live.prefix_mark = system_mark
            prepared = self._same_images(self._prepare(images))
            live = self._live
            same = bool(prepared) and len(live.images) == 1 and prepared[0] is live.images[0]
            live.forget_after(len(live.marks) - 1 if same else system_mark)  # a new question, not a rollback
        elif system:
            # Evaluate the system prompt as its own unit, so that the next question can keep it in
            # the KV cache; the images are decoded meanwhile (Pillow and llama.cpp both release the GIL).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="thyme-image") as pool:
                decoding = pool.submit(self._prepare, images)
                self._sync_system(system)
                self._live.mark_prefix()
                prepared = decoding.result()
        else:
            prepared = self._same_images(self._prepare(images))
        messages.append(Message("user", text, prepared))
        target = self._renderer.render(messages, add_generation_prompt=True)
        all_images = [img for m in messages for img in m.images]
        self._live.sync(target, all_images)
        if first_turn and prepared:
            self._live.mark_image_prefix()
            if self._engine.n_seq > 1:  # other sequences may start from it right away (--samples)
                self._engine._publish(self)
        self._messages = messages
        self._open = Message("assistant", "")
        self._scanner.reset()

    def _same_images(self, prepared: list[PreparedImage]) -> list[PreparedImage]:
        """The images the previous question left in the KV cache stand for equal pixels here, so
        that the context is kept through them (it keeps only the very same image objects)."""
        kept = self._live.images
        return [
            old
            if i < len(kept) and (old := kept[i]).width == new.width and old.height == new.height and old.rgb == new.rgb
            else new
            for i, new in enumerate(prepared)
        ]

    def _sync_system(self, system: str) -> None:
        """Evaluate the system prompt into an empty context, or load its saved state from disk
        (prompt_state) when an earlier process evaluated the same prompt with the same settings."""
        live = self._live
        store = self._engine.prompt_store
        if store is None or live.cells or not system:
            live.sync(system, [])
            return
        t0 = time.perf_counter()
        tokens = store.load(self._native, system, live.seq)
        if tokens is not None:
            live.restore(system, tokens)
            self._counters.prefill_s += time.perf_counter() - t0
            self._counters.prompt_state_loaded = True
            return
        live.sync(system, [])
        if live.cells and live.stream and all(isinstance(t, int) for t in live.stream):
            store.save(self._native, system, [t for t in live.stream if isinstance(t, int)], live.seq)

    def _system_prefix(self, messages: list[Message], user_text: str) -> str:
        """The rendered text every question on this model starts with (the system prompt), when it
        can be evaluated apart without changing the tokens: for ChatML it ends in a special token;
        for a chat template it is what the template renders before any user text, and is kept only
        when the user text then starts with an image (libmtmd tokenizes the text around an image
        separately)."""
        if isinstance(self._renderer, ChatMLRenderer):
            system = self._renderer.render(messages, add_generation_prompt=False)
            return system if system and count_markers(system) == 0 else ""
        if not user_text.startswith(IMAGE_MARKER):
            return ""
        a, b = (
            self._renderer.render([*messages, Message("user", probe)], add_generation_prompt=True)
            for probe in ("a", "b")
        )
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        target = self._renderer.render([*messages, Message("user", user_text)], add_generation_prompt=True)
        prefix = a[:n]
        if not prefix or count_markers(prefix) or not target.startswith(prefix + IMAGE_MARKER):
            return ""
        return prefix

    @_locked
    def feed_assistant(self, text: str, images: Sequence[Path] = ()) -> None:
        """Append text (and images) inside the open assistant turn, e.g. a sandbox observation."""
        self._check()
        if self._open is None:
            raise EngineError("feed_assistant needs an open assistant turn: call feed_user first")
        check_markers(text, images, "feed_assistant")
        prepared = self._prepare(images)
        self._finish_text()
        self._live.append(text, prepared)
        self._open.text += text
        self._open.images.extend(prepared)
        self._scanner.feed(without_observations(text))

    def _prepare(self, images: Sequence[Path]) -> list[PreparedImage]:
        t0 = time.perf_counter()
        prepared = [load_image(Path(p), self._engine.image_sizing) for p in images]
        self._counters.image_load_s += time.perf_counter() - t0
        return prepared

    def _finish_text(self) -> None:
        """A character cut in half by the token budget becomes U+FFFD before the turn moves on."""
        tail = self._utf8.flush()
        if tail and self._open is not None:
            self._open.text += tail
            self._live.note_text(tail)

    def use_fences(self, on: bool) -> None:
        """Treat a ```python fence as a code block (the generic protocol): sampled as code, and its
        closing ``` ends the turn as ``</code>`` does."""
        self._scanner.fences = on

    # --- generation --------------------------------------------------------------------------------

    def generate(self, *, max_tokens: int, on_text: Callable[[str], None] | None = None) -> Generation:
        """Continue the assistant turn until </code>, </answer>, end of turn or max_tokens.

        Every kept token is evaluated right away, so ``Generation.text`` is exactly what the
        context now holds after the fed text; a sampled end-of-turn token is not kept (the next
        feed closes the turn in the model's own format).
        """
        self._check()
        budget = self._token_budget(max_tokens)
        samplers = self._samplers
        if self._retry_warm:  # a retried turn must differ from the failed one: sample it warm
            samplers, self._retry_warm = self._warm_retry_samplers(), False
        if self._engine._rounds is not None:
            return self._generate_together(self._engine._rounds, samplers, budget, on_text)
        return self._generate_alone(samplers, budget, on_text)

    def _token_budget(self, max_tokens: int) -> int:
        """How many tokens this generate may keep: max_tokens, or less where the context is nearly full."""
        if self._open is None:
            raise EngineError("generate needs an open assistant turn: call feed_user first")
        if max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {max_tokens}")
        live = self._live
        if not live.logits_valid:
            raise EngineError(
                "nothing to continue from: the last feed ended on an image",
                hint="put some text after the last image marker",
            )
        room = live.n_ctx - live.cells
        if room < 1:
            raise EngineError(
                f"the context is full ({live.n_ctx} tokens)",
                hint=CONTEXT_FULL_HINT,
            )
        return min(max_tokens, room)

    def _generate_alone(self, samplers: AtsSamplers, budget: int, on_text: Callable[[str], None] | None) -> Generation:
        """generate() for the only sequence: sample from the context's logits, evaluate, repeat."""
        native, scanner, utf8, live = self._native, self._scanner, self._utf8, self._live
        code_chain, prose_chain, shared = samplers.code, samplers.prose, samplers.shared_history
        sample, piece, is_eog, push = native.sample, native.piece, native.is_eog, live.push_token
        decode = utf8.decode
        out: list[str] = []
        tokens: list[int] = []
        reason: GenerationStopReason = "max_tokens"
        t0 = time.perf_counter()
        try:
            while len(tokens) < budget:
                chain = code_chain if scanner.in_code else prose_chain
                token = sample(chain)
                if shared:
                    samplers.accept_other(chain, token)
                if is_eog(token):
                    reason = "end_of_turn"
                    break
                text = decode(piece(token))
                stop = scanner.feed(text) if text else None
                push(token, text, not utf8.pending)
                tokens.append(token)
                _emit(text, out, on_text)
                if stop is not None:
                    reason = stop
                    break
        finally:
            self._end_generation(tokens, out, t0)
        return Generation(text="".join(out), stop_reason=reason, n_tokens=len(tokens))

    def _end_generation(self, tokens: list[int], out: list[str], t0: float) -> None:
        """What a generation loop leaves behind, also when it raised: counters, the kept tokens,
        the open turn's text."""
        assert self._open is not None
        self._counters.decode_s += time.perf_counter() - t0
        self._counters.tokens_generated += len(tokens)
        self.last_tokens = tokens
        self._open.text += "".join(out)

    def _generate_together(
        self, rounds: StepRounds, samplers: AtsSamplers, budget: int, on_text: Callable[[str], None] | None
    ) -> Generation:
        """generate() for one of several sequences: the first token is drawn from the logits this
        sequence's last feed left (a saved copy), every later one in a shared step (StepRounds)."""
        scanner, utf8, native, seq = self._scanner, self._utf8, self._native, self._live.seq
        token, logprob = self._first_token_together(samplers)
        code_chain, prose_chain, shared = samplers.code, samplers.prose, samplers.shared_history
        out: list[str] = []
        tokens: list[int] = []
        reason: GenerationStopReason = "max_tokens"
        t0 = time.perf_counter()
        rounds.enter(seq)
        try:
            while True:
                if native.is_eog(token):
                    reason = "end_of_turn"
                    break
                text = utf8.decode(native.piece(token))
                stop = scanner.feed(text) if text else None
                last = stop is not None or len(tokens) + 1 >= budget
                chain = code_chain if scanner.in_code else prose_chain
                following = self._step_together(rounds, token, text, logprob, None if last else chain)
                tokens.append(token)
                _emit(text, out, on_text)
                if stop is not None:
                    reason = stop
                    break
                if last or following is None:
                    break
                token, logprob = following
                if shared:
                    samplers.accept_other(chain, token)
        finally:
            rounds.leave(seq)
            self._end_generation(tokens, out, t0)
        return Generation(text="".join(out), stop_reason=reason, n_tokens=len(tokens))

    def _first_token_together(self, samplers: AtsSamplers) -> tuple[int, float]:
        """The first token (and its log-probability) from the logits this sequence's last feed saved."""
        live = self._live
        assert self._open is not None
        with self._engine.lock:
            if live.saved_logits is None:
                live.refresh_logits()
            logits = live.saved_logits
        assert logits is not None
        chain = samplers.code if self._scanner.in_code else samplers.prose
        token = sample_from_logits(chain, logits)
        logprob = token_logprob(logits, token)
        if samplers.shared_history:
            samplers.accept_other(chain, token)
        live.saved_logits = None  # used: the next generate without a feed evaluates the last token again
        return token, logprob

    def _step_together(
        self, rounds: StepRounds, token: int, text: str, logprob: float, chain: Any
    ) -> tuple[int, float] | None:
        """Evaluate TOKEN in the shared step and keep it; the step samples the next one with CHAIN
        (None: this is the last token)."""
        live = self._live
        live.broken = True  # until the step is in
        following = rounds.decode(live.seq, token, live.pos, chain)
        live.broken = False
        live.push_token(token, text, not self._utf8.pending, evaluated=True)
        self._counters.logprob_sum += logprob
        self._counters.logprob_tokens += 1
        return following

    # --- retrying a turn (--on-error retry) ---------------------------------------------------------

    def checkpoint(self) -> int:
        """Remember this point (before a generate) so a failed step's turn can be taken back."""
        self._check()
        if self._open is None or not self._live.logits_valid:
            raise EngineError("a checkpoint needs an open assistant turn ending in text")
        self._checkpoints.append(
            (
                len(self._live.marks) - 1,
                list(self._messages),
                Message(self._open.role, self._open.text, list(self._open.images)),
                copy.copy(self._scanner),
            )
        )
        return len(self._checkpoints) - 1

    @_locked
    def rollback(self, mark: int, *, resample_warm: bool = True) -> None:
        """Drop everything generated or fed since checkpoint ``mark``; the KV cache follows.

        With ``resample_warm`` a greedy conversation samples the next turn's prose at temperature
        1 (code stays greedy), so the retried turn is not a copy of the failed one.
        """
        self._check()
        index, messages, open_turn, scanner = self._checkpoints[mark]
        del self._checkpoints[mark + 1 :]
        self._live.rewind(index)
        self._messages = list(messages)
        self._open = Message(open_turn.role, open_turn.text, list(open_turn.images))
        self._scanner = copy.copy(scanner)
        self._utf8 = Utf8Pieces()
        self._retry_warm = resample_warm and self._samplers.options.greedy

    def _warm_retry_samplers(self) -> AtsSamplers:
        """Temperature 1.0 for the prose of a retried turn (as upstream Thyme does); code stays greedy."""
        if self._retry_samplers is None:
            o = self._samplers.options
            warm = SamplingOptions(temperature=1.0, top_p=TOP_P, top_k=TOP_K, seed=o.seed + 1, logit_bias=o.logit_bias)
            self._retry_samplers = AtsSamplers(warm, self._native.n_vocab)
        return self._retry_samplers

    # --- state -------------------------------------------------------------------------------------

    @property
    def on_progress(self) -> ProgressFn | None:
        """Called during long feeds: ("encode", 0, n_tokens) before an image is encoded and
        ("prefill", done, total) as fed tokens are evaluated (see context.ProgressFn)."""
        return self._live.progress

    @on_progress.setter
    def on_progress(self, fn: ProgressFn | None) -> None:
        self._live.progress = fn

    @property
    def counters(self) -> LlamaCounters:
        c = self._counters
        c.native_s = self._native.native_s - self._native_start
        c.rollbacks = self._live.rollbacks
        c.retokenized = self._live.retokenized
        return c

    @property
    def text(self) -> str:
        """Everything the context holds, as text (IMAGE_MARKER where each image is)."""
        return self._live.text

    @property
    def n_tokens(self) -> int:
        """KV cells in use (text tokens + image tokens)."""
        return self._live.cells

    @property
    def in_code(self) -> bool:
        """True while the open assistant turn is inside a <code> block (decoding is greedy)."""
        return self._scanner.in_code

    @_locked
    def logits(self) -> np.ndarray:
        """A copy of the logits for the next token (diagnostics and tests)."""
        self._check()
        if not self._live.logits_valid:
            raise EngineError("no logits: the context ends on an image or is empty")
        if self._live.keep_logits:  # one of several sequences: its own saved row, not the context's last
            if self._live.saved_logits is None:
                self._live.refresh_logits()
            assert self._live.saved_logits is not None
            return self._live.saved_logits.copy()
        return self._native.logits()

    def token_stream(self) -> list[StreamItem]:
        """What the context holds: token ids and images, in order (diagnostics and tests)."""
        return list(self._live.stream)

    @_locked
    def evaluate_stream(self, stream: Sequence[StreamItem]) -> None:
        """Evaluate a recorded stream from scratch in big batches (diagnostics)."""
        self._check()
        self._live.clear()
        self._live.replay(stream)

    @_locked
    def close(self) -> None:
        """End the question; the next ``open()`` keeps only the shared system-prompt prefix."""
        if self._closed:
            return
        self._closed = True
        # Drop the pixels and embeddings now: a batch keeps engines (not conversations) alive.
        self._messages, self._open = [], None
        self._engine._prefix = self._live.detach_prefix()
        self._engine._prefix_seq = self._live.seq
        self._live.release()
        if self._own_samplers:
            self._samplers.close()
        if self._retry_samplers is not None:
            self._retry_samplers.close()
            self._retry_samplers = None
        self._engine._released(self)

    def _check(self) -> None:
        if self._closed:
            raise EngineError("this conversation was closed (the engine opened a new one)")
        self._engine._check()


def _emit(text: str, out: list[str], on_text: Callable[[str], None] | None) -> None:
    """Collect a generated piece of text and stream it to ON_TEXT (an empty piece is a split character)."""
    if text:
        out.append(text)
        if on_text is not None:
            on_text(text)


if TYPE_CHECKING:

    def _conforms(engine: LlamaEngine, conversation: LlamaConversation) -> tuple[Engine, Conversation]:
        """mypy checks here that the classes satisfy base.Engine and base.Conversation."""
        return engine, conversation
