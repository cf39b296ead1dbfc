"""The live context of one question: what is in the KV cache, and how to extend it.

``LiveContext`` records everything evaluated (text, token/image stream, KV position and cells) as
marks; ``sync`` evaluates only the new tail of a rendered conversation, or rolls back to the common
prefix first. Text and KV move together; a failure halfway marks the context broken
(docs/engine.md, "One live context per question").
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thyme_cli.defaults import CONTEXT_FULL_HINT
from thyme_cli.engine.base import IMAGE_MARKER, Counters
from thyme_cli.engine.images import ImageSizing, PreparedImage
from thyme_cli.engine.llama.chat import count_markers
from thyme_cli.engine.llama.native import Chunk, Native
from thyme_cli.errors import EngineError

CTX_HINT = CONTEXT_FULL_HINT

# A mark: the state right after one evaluated unit. Plain tuples keep the per-token cost low.
# (chars of evaluated text, next position, KV cells used, images evaluated, stream length,
#  clean: the text ends on a character boundary so the context may be cut here)
Mark = tuple[int, int, int, int, int, bool]
_CHARS, _POS, _CELLS, _IMAGES, _STREAM, _CLEAN = range(6)
_EMPTY: Mark = (0, 0, 0, 0, 0, True)

StreamItem = int | PreparedImage
# Progress of a long feed, for a live display: ("encode", 0, n) before an image of n tokens goes
# through the vision encoder, ("prefill", done, total) as a fed suffix's tokens are evaluated.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SharedPrefix:
    """A start of the context (the system prompt, maybe the question's image) left in the KV cache
    for the next question."""

    text: str
    marks: list[Mark]
    stream: list[StreamItem]
    pos: int
    cells: int
    logits_valid: bool
    images: list[PreparedImage]


@dataclass
class SyncPlan:
    """What ``sync`` will do: cut back to ``mark`` and evaluate ``suffix`` with ``images``."""

    mark_index: int
    suffix: str
    images: list[PreparedImage]

    @property
    def rolls_back(self) -> bool:
        return self.mark_index >= 0


class LiveContext:
    """Evaluated text, stream and KV bookkeeping for one question (one llama.cpp sequence)."""

    def __init__(
        self, native: Native, counters: Counters, sizing: ImageSizing, *, reserve_tokens: int, keep_embeddings: bool
    ) -> None:
        self.native = native
        self.counters = counters
        self.sizing = sizing
        self.reserve_tokens = reserve_tokens
        self.keep_embeddings = keep_embeddings
        self.n_ctx = native.n_ctx
        self._pieces: list[str] = []
        self._chars = 0
        self.pos = 0
        self.cells = 0
        self.images: list[PreparedImage] = []
        self.stream: list[StreamItem] = []
        self.marks: list[Mark] = [_EMPTY]
        self._embeddings: dict[PreparedImage, np.ndarray] = {}
        self.logits_valid = False
        self.broken = False
        self.rollbacks = 0
        self.retokenized = 0  # cells dropped and evaluated again by append's re-tokenization
        self.prefix_mark: int | None = None
        self.progress: ProgressFn | None = None
        self._probe: PreparedImage | None = None
        # Several sequences in one context (engine/parallel.py): this one's id, and a copy of the
        # logits its last feed left (another sequence's decode overwrites llama.cpp's buffer).
        self.seq = 0
        self.keep_logits = False
        # Entered around the vision encoder when other sequences may decode during the encode.
        self.encode_guard: Callable[[], AbstractContextManager[None]] | None = None
        self.saved_logits: np.ndarray | None = None

    # --- state -----------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """Everything evaluated, as text (one IMAGE_MARKER per image)."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def _check(self) -> None:
        if self.broken:
            raise EngineError(
                "the conversation's context is broken by an earlier failure", hint="open a new conversation"
            )

    # --- planning --------------------------------------------------------------------------------

    def plan(self, target: str, images: Sequence[PreparedImage]) -> SyncPlan:
        """How to make the context hold ``target``, whose images are ``images`` in order."""
        self._check()
        evaluated = self.text
        n = min(len(evaluated), len(target))
        common = 0
        if evaluated[:n] == target[:n]:
            common = n
        else:
            lo, hi = 0, n  # binary search for the first differing character
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if evaluated[:mid] == target[:mid]:
                    lo = mid
                else:
                    hi = mid - 1
            common = lo
        # Images before the cut must be the very same images, not just the same markers.
        same_images = 0
        for old, new in zip(self.images, images, strict=False):
            if old is not new:
                break
            same_images += 1
        if common == len(evaluated) and same_images == len(self.images):
            return self._checked(SyncPlan(-1, target[common:], list(images[len(self.images) :])))
        index = len(self.marks) - 1
        while index > 0:
            m = self.marks[index]
            if m[_CHARS] <= common and m[_IMAGES] <= same_images and m[_CLEAN]:
                break
            index -= 1
        # Something must be evaluated after a cut, or there would be no fresh logits.
        if self.marks[index][_CHARS] == len(target) and index > 0:
            index -= 1
            while index > 0 and not self.marks[index][_CLEAN]:
                index -= 1
        m = self.marks[index]
        return self._checked(SyncPlan(index, target[m[_CHARS] :], list(images[m[_IMAGES] :])))

    @staticmethod
    def _checked(plan: SyncPlan) -> SyncPlan:
        if count_markers(plan.suffix) != len(plan.images):
            raise EngineError(
                f"the rendered prompt holds {count_markers(plan.suffix)} image marker(s) where "
                f"{len(plan.images)} image(s) are due",
                hint="the chat template drops or reorders images; try chat_format='chatml'",
            )
        return plan

    # --- evaluation ------------------------------------------------------------------------------

    def sync(self, target: str, images: Sequence[PreparedImage]) -> None:
        """Make the context hold ``target``: evaluate only what is new (see module docstring)."""
        self.apply(self.plan(target, images))

    def append(self, text: str, images: Sequence[PreparedImage]) -> None:
        """Evaluate ``text`` right after what is there (no diff: the caller knows it extends).

        The tokens are those of the whole conversation tokenized at once (what transformers'
        processor gives): text fed after text can merge with it (``</code>`` + ``<sandbox_output>``
        has the token ``><``), so the tail is re-tokenized with it and re-evaluated where it differs.
        """
        self._check()
        plan = self._checked(SyncPlan(-1, text, list(images)))
        head = text.split(IMAGE_MARKER, 1)[0]
        t0 = time.perf_counter()
        joined = self._joined_tail(head) if head else None
        if joined is None:
            self.counters.prefill_s += time.perf_counter() - t0
            self.apply(plan)
            return
        index, tokens = joined
        self._check_room(self.marks[index][_CELLS], len(tokens), [])
        dropped = self.text[self.marks[index][_CHARS] :]  # re-evaluated below, with head
        self.retokenized += self.cells - self.marks[index][_CELLS]
        self.broken = True
        self._cut(index)
        self._push_tokens(tokens, dropped + head)
        self.broken = False
        self.counters.prefill_s += time.perf_counter() - t0
        rest = text[len(head) :]
        if rest:
            self.apply(self._checked(SyncPlan(-1, rest, list(images))))

    def _safe_mark(self, head: str) -> int | None:
        """The latest clean mark after the last image where tokenizing may restart: right after a
        control token, or after a newline that non-space text follows (Qwen2/GPT-style
        pre-tokenizers never join across either)."""
        text = self.text
        following = text + head[:1]
        for index in range(len(self.marks) - 1, -1, -1):
            m = self.marks[index]
            if m[_IMAGES] != len(self.images):
                return None
            if not m[_CLEAN]:
                continue
            if m[_STREAM] == 0:
                return index
            before = self.stream[m[_STREAM] - 1]
            if isinstance(before, int) and self.native.is_control(before):
                return index
            nxt = following[m[_CHARS] : m[_CHARS] + 1]
            if text[m[_CHARS] - 1 : m[_CHARS]] == "\n" and nxt and not nxt.isspace():
                return index
        return None

    def _joined_tail(self, head: str) -> tuple[int, list[int]] | None:
        """(mark to cut back to, tokens to evaluate after it) when ``head`` joins the text before it
        differently than tokenizing it alone; None when appending it as is gives the same tokens."""
        if not self.stream or not isinstance(self.stream[-1], int):
            return None
        start = self._safe_mark(head)
        if start is None:
            return None
        m = self.marks[start]
        tail_text = self.text[m[_CHARS] :]
        tail = [t for t in self.stream[m[_STREAM] :] if isinstance(t, int)]
        joint = self.native.tokenize(tail_text + head)
        if joint == tail + self.native.tokenize(head):
            return None
        differ = next(
            (i for i, (a, b) in enumerate(zip(joint, tail, strict=False)) if a != b), min(len(joint), len(tail))
        )
        index = start
        for k in range(len(self.marks) - 1, start, -1):
            mk = self.marks[k]
            if mk[_CLEAN] and mk[_STREAM] - m[_STREAM] <= differ:
                index = k
                break
        return index, joint[self.marks[index][_STREAM] - m[_STREAM] :]

    def apply(self, plan: SyncPlan) -> None:
        """Evaluate the plan's suffix (rolling back to its mark first where it says so) and mark the
        places a later append or question may resume from."""
        if not plan.suffix:
            return
        c = self.counters
        t0, encode0 = time.perf_counter(), c.image_encode_s
        chars0, after_images = self._evaluate_suffix(plan)
        # Prefill: everything but the vision encoder (tokenizing, image preprocessing, decoding).
        c.prefill_s += time.perf_counter() - t0 - (c.image_encode_s - encode0)
        # A mark right after each image and the control tokens the projector puts after it (e.g.
        # <|vision_end|>): libmtmd tokenizes the text after an image on its own, so a later append
        # may re-tokenize from there (see append), and a later question about the same image resumes
        # there (mark_image_prefix) with its text tokenized as a lone question's is.
        at = 0
        for stream_len, pos, cells, n_images in after_images:
            at = plan.suffix.index(IMAGE_MARKER, at) + len(IMAGE_MARKER)
            self.marks.append((chars0 + at, pos, cells, n_images, stream_len, True))
        self._pieces.append(plan.suffix)
        self._chars += len(plan.suffix)
        if self.marks[-1][_CHARS] != self._chars or self.marks[-1][_STREAM] != len(self.stream):
            self.marks.append((self._chars, self.pos, self.cells, len(self.images), len(self.stream), True))
        if self.logits_valid:
            self._save_logits()
        self.broken = False

    def _evaluate_suffix(self, plan: SyncPlan) -> tuple[int, list[tuple[int, int, int, int]]]:
        """Tokenize and evaluate the suffix; returns the text length it starts at and _evaluate's
        places after each image. The context stays ``broken`` until apply has marked the end."""
        base = self.marks[plan.mark_index] if plan.rolls_back else self.marks[-1]
        native = self.native
        add_special = (
            base[_POS] == 0 and native.add_bos and not (native.bos_text and plan.suffix.startswith(native.bos_text))
        )
        # Resuming right after an image (a question sharing an earlier one's image): libmtmd puts
        # the model's end-of-image tokens at the start of the text after an image, so the suffix is
        # tokenized behind a tiny probe image and the probe's chunks are dropped. The text then
        # becomes exactly the chunk a lone question evaluates there (same tokens, same batches).
        after_image = base[_STREAM] > 0 and not isinstance(self.stream[base[_STREAM] - 1], int)
        text, images = plan.suffix, list(plan.images)
        if after_image:
            text, images = IMAGE_MARKER + text, [self._probe_image(), *images]
        with native.tokenize_multimodal(text, images, add_special=add_special) as all_chunks:
            chunks = all_chunks
            if after_image:
                first = next(i for i, ch in enumerate(all_chunks) if ch.image)
                chunks = all_chunks[first + 1 :]
            self._check_room(base[_CELLS], sum(c.n_tokens for c in chunks), plan.images)
            self.broken = True  # until the whole suffix is in
            if plan.rolls_back:
                self._cut(plan.mark_index)
            return self._chars, self._evaluate(chunks, plan.images)

    def _save_logits(self) -> None:
        if self.keep_logits:
            self.saved_logits = self.native.logits()

    def _probe_image(self) -> PreparedImage:
        """A small blank image whose only use is to make libmtmd tokenize text as it does after an image."""
        if self._probe is None:
            side = 2 * (self.sizing.factor or 28)
            self._probe = PreparedImage(
                path=Path("<probe>"), width=side, height=side, rgb=bytes(side * side * 3), original_size=(side, side)
            )
        return self._probe

    def _check_room(self, cells: int, n_new: int, images: Sequence[PreparedImage]) -> None:
        need = cells + n_new + self.reserve_tokens
        if need <= self.n_ctx:
            return
        detail = f"{cells} in context + {n_new} new"
        if images:
            detail += f", {len(images)} image(s) among them"
        if self.reserve_tokens:
            detail += f" + {self.reserve_tokens} kept for the reply"
        raise EngineError(
            f"the conversation needs {need} tokens ({detail}) but the context holds {self.n_ctx}", hint=CTX_HINT
        )

    def _cut(self, index: int) -> None:
        """Remove everything after mark ``index`` from the KV cache and the records."""
        m = self.marks[index]
        self.native.seq_rm(m[_POS], self.seq)
        del self.marks[index + 1 :]
        text = self.text[: m[_CHARS]]
        self._pieces = [text] if text else []
        self._chars = m[_CHARS]
        self.pos, self.cells = m[_POS], m[_CELLS]
        del self.images[m[_IMAGES] :]
        del self.stream[m[_STREAM] :]
        if self.prefix_mark is not None and self.prefix_mark > index:
            self.prefix_mark = None
        self.rollbacks += 1

    def forget_after(self, index: int) -> None:
        """Cut back to mark ``index`` as the start of a new question (not counted as a rollback)."""
        if index < len(self.marks) - 1:
            self._cut(index)
            self.rollbacks -= 1

    def _evaluate(self, chunks: Sequence[Chunk], images: Sequence[PreparedImage]) -> list[tuple[int, int, int, int]]:
        """Evaluate the chunks; returns (stream length, position, cells, images) right after each
        image and the control tokens that follow it."""
        it = iter(images)
        after: list[tuple[int, int, int, int]] = []
        total, done = sum(ch.n_tokens for ch in chunks), 0
        for chunk in chunks:
            if chunk.image:
                self._evaluate_image(chunk, next(it), done, total)
                after.append((len(self.stream), self.pos, self.cells, len(self.images)))
            else:
                if after and after[-1][0] == len(self.stream):  # the text chunk right after an image
                    lead = 0
                    while lead < len(chunk.tokens) and self.native.is_control(chunk.tokens[lead]):
                        lead += 1
                    after[-1] = (len(self.stream) + lead, self.pos + lead, self.cells + lead, after[-1][3])
                self._evaluate_text(chunk, done, total)
            done += chunk.n_tokens  # a text chunk's n_tokens is len(tokens)
        return after

    def _evaluate_text(self, chunk: Chunk, done: int, total: int) -> None:
        """Decode a text chunk in batches, reporting prefill progress after each."""
        if not chunk.tokens:
            return
        progress = self.progress
        on_batch = None
        if progress is not None:

            def on_batch(n: int) -> None:
                progress("prefill", done + n, total)

        self.native.decode_tokens(chunk.tokens, self.pos, on_batch, self.seq)
        self.pos += chunk.n_tokens
        self.cells += chunk.n_tokens
        self.stream.extend(chunk.tokens)
        self.counters.tokens_evaluated += chunk.n_tokens
        self.logits_valid = True

    def _evaluate_image(self, chunk: Chunk, image: PreparedImage, done: int, total: int) -> None:
        """Decode an image chunk from its embeddings (kept ones reused); image decodes leave no logits."""
        self._check_grid(image, chunk)
        embd = self._image_embeddings(chunk, image)
        self.pos = self.native.decode_image(chunk, embd, self.pos, self.seq)
        if self.progress is not None:
            self.progress("prefill", done + chunk.n_tokens, total)
        self.cells += chunk.n_tokens
        self.counters.tokens_evaluated += chunk.n_tokens
        self.images.append(image)
        self.stream.append(image)
        self.logits_valid = False  # image decodes produce no logits

    def _image_embeddings(self, chunk: Chunk, image: PreparedImage) -> np.ndarray:
        """The image's embeddings: kept ones when they fit this chunk, else encoded now."""
        native, c = self.native, self.counters
        embd = self._embeddings.get(image)
        if embd is not None and embd.size == chunk.n_tokens * native.n_embd_inp:
            return embd
        if self.progress is not None:
            self.progress("encode", 0, chunk.n_tokens)
        t0 = time.perf_counter()
        if self.encode_guard is not None:  # other sequences decode meanwhile
            with self.encode_guard():
                embd = native.encode_image(chunk).copy()
        else:
            embd = native.encode_image(chunk)
        c.image_encode_s += time.perf_counter() - t0
        c.images_encoded += 1
        if self.keep_embeddings:
            embd = self._embeddings[image] = embd.copy()
        return embd

    def _check_grid(self, image: PreparedImage, chunk: Chunk) -> None:
        """mtmd must keep the smart_resize grid; if it resized again, the model sees another image."""
        expected = self.sizing.grid(image.width, image.height)
        if expected is not None and chunk.grid != expected:
            warnings.warn(
                f"libmtmd resized {image.path.name} to a {chunk.grid} token grid instead of {expected}",
                RuntimeWarning,
                stacklevel=2,
            )

    def rewind(self, index: int) -> None:
        """Go back to mark ``index`` and make its logits current again (for retrying a turn).

        The KV tail after the mark is dropped and the mark's last token is evaluated once more,
        because llama.cpp's logits buffer still holds those of the dropped tail.
        """
        self._check()
        self._cut(index)
        last = self.stream[-1] if self.stream else None
        if not isinstance(last, int):
            raise EngineError("cannot rewind to a point that does not end in text")
        self.broken = True
        self.native.seq_rm(self.pos - 1, self.seq)
        self.native.decode_one(last, self.pos - 1, self.seq)
        self.logits_valid = True
        self._save_logits()
        self.broken = False

    def _push_tokens(self, tokens: list[int], text: str) -> None:
        """Evaluate exact tokens (which spell ``text``) after the current end, as one unit."""
        if tokens:
            self.native.decode_tokens(tokens, self.pos, None, self.seq)
            self.pos += len(tokens)
            self.cells += len(tokens)
            self.stream.extend(tokens)
            self.counters.tokens_evaluated += len(tokens)
            self.logits_valid = True
            self._save_logits()
        self._pieces.append(text)
        self._chars += len(text)
        self.marks.append((self._chars, self.pos, self.cells, len(self.images), len(self.stream), True))

    def refresh_logits(self) -> None:
        """Evaluate the last token again so its logits are current (and saved when kept)."""
        last = self.stream[-1] if self.stream else None
        if not isinstance(last, int):
            raise EngineError("nothing to continue from: the context does not end in text")
        self.broken = True
        self.native.seq_rm(self.pos - 1, self.seq)
        self.native.decode_one(last, self.pos - 1, self.seq)
        self.broken = False
        self.logits_valid = True
        self._save_logits()

    def push_token(self, token: int, text: str, clean: bool, *, evaluated: bool = False) -> None:
        """Evaluate one generated token and record it (the decode loop's only bookkeeping);
        ``evaluated``: a parallel step already put it in the KV cache."""
        if not evaluated:
            self.broken = True  # stays set if the decode fails or is interrupted
            self.native.decode_one(token, self.pos, self.seq)
            self.broken = False
        self.pos += 1
        self.cells += 1
        if text:
            self._pieces.append(text)
            self._chars += len(text)
        self.stream.append(token)
        self.marks.append((self._chars, self.pos, self.cells, len(self.images), len(self.stream), clean))

    def note_text(self, text: str) -> None:
        """Record text whose bytes are already in the KV cache (a flushed partial character)."""
        if text:
            self._pieces.append(text)
            self._chars += len(text)
            m = self.marks[-1]
            self.marks[-1] = (self._chars, m[_POS], m[_CELLS], m[_IMAGES], m[_STREAM], True)

    def mark_prefix(self) -> None:
        """Remember the current end (e.g. the system prompt) as worth keeping for the next question."""
        self.prefix_mark = len(self.marks) - 1

    def mark_image_prefix(self) -> None:
        """Keep through the last image evaluated so far (the question's image), when there is one:
        the next question about the same image resumes there without encoding it again."""
        for index in range(len(self.marks) - 1, 0, -1):
            if self._follows_image(self.marks[index][_STREAM]):
                self.prefix_mark = index
                return

    def _follows_image(self, end: int) -> bool:
        """Whether stream position ``end`` comes right after an image and the control tokens
        libmtmd puts after it (e.g. <|vision_end|>)."""
        while end > 0:
            item = self.stream[end - 1]
            if not isinstance(item, int):
                return True
            if not self.native.is_control(item):
                return False
            end -= 1
        return False

    def holds_beyond(self, text: str) -> int | None:
        """The index of the mark that ends exactly at ``text`` when the context holds ``text`` and
        more (an adopted prefix through an image), else None."""
        if len(self.text) <= len(text) or not self.text.startswith(text):
            return None
        return next((i for i, m in enumerate(self.marks) if m[_CHARS] == len(text) and m[_CLEAN]), None)

    def snapshot_prefix(self) -> SharedPrefix | None:
        """The prefix (see mark_prefix) as it stands, the context left as it is: other sequences
        of the context may copy its cells while this conversation goes on."""
        if self.broken or self.prefix_mark is None or self.prefix_mark >= len(self.marks):
            return None
        m = self.marks[self.prefix_mark]
        if not m[_CLEAN] or m[_CELLS] == 0:
            return None
        return SharedPrefix(
            self.text[: m[_CHARS]],
            self.marks[: self.prefix_mark + 1],
            self.stream[: m[_STREAM]],
            m[_POS],
            m[_CELLS],
            logits_valid=False,
            images=self.images[: m[_IMAGES]],
        )

    def still_holds(self, prefix: SharedPrefix) -> bool:
        """True while the KV cells of ``prefix`` (taken from this context) are still in it."""
        n = len(prefix.marks)
        return len(self.marks) >= n and self.marks[n - 1] == prefix.marks[-1]

    def detach_prefix(self) -> SharedPrefix | None:
        """Cut back to the prefix mark and hand that state over (the conversation is over).

        The next question on the same engine usually starts with the same system prompt, and often
        with the same image; keeping their KV cells saves evaluating (and encoding) them again.
        """
        prefix = self.snapshot_prefix()
        if prefix is not None:  # this conversation's own record stays as it was, for its readers
            self.native.seq_rm(prefix.pos, self.seq)
        return prefix

    def adopt(self, prefix: SharedPrefix) -> None:
        """Start from what the previous question left in the KV cache (see detach_prefix)."""
        self._pieces = [prefix.text] if prefix.text else []
        self._chars = len(prefix.text)
        self.marks = list(prefix.marks)
        self.stream = list(prefix.stream)
        self.images = list(prefix.images)
        self.pos, self.cells, self.logits_valid = prefix.pos, prefix.cells, prefix.logits_valid
        self.prefix_mark = len(self.marks) - 1

    def restore(self, text: str, tokens: Sequence[int]) -> None:
        """Record that an empty context now holds ``text`` as ``tokens`` (a sequence state loaded
        from disk, see prompt_state); llama.cpp restores no logits with it."""
        self._pieces, self._chars = [text], len(text)
        self.stream = list(tokens)
        self.pos = self.cells = len(tokens)
        self.marks = [_EMPTY, (len(text), self.pos, self.cells, 0, len(self.stream), True)]
        self.images, self.logits_valid = [], False

    def clear(self) -> None:
        """Empty the KV cache and the record (a from-scratch diagnostic replay starts here)."""
        if self.seq:
            self.native.clear_seq(self.seq)
        else:
            self.native.clear()
        self._pieces, self._chars = [], 0
        self.pos = self.cells = 0
        self.images, self.stream, self.marks = [], [], [_EMPTY]
        self.logits_valid, self.prefix_mark = False, None

    def release(self) -> None:
        """Forget images, embeddings and the stream (the conversation is over)."""
        self.images, self.stream, self._embeddings = [], [], {}
        self.broken = True

    # --- diagnostics -------------------------------------------------------------------------------

    def replay(self, stream: Sequence[StreamItem]) -> None:
        """Evaluate a recorded token/image stream from scratch, text in as few batches as possible.

        Diagnostics and tests: the logits after an incremental conversation must equal the
        logits after replaying its stream into a fresh context.
        """
        self._check()
        if self.cells:
            raise EngineError("replay needs an empty context")
        native = self.native
        run: list[int] = []
        for item in [*stream, None]:
            if isinstance(item, int):
                run.append(item)
                continue
            if run:
                self._room_for(len(run))
                native.decode_tokens(run, self.pos, None, self.seq)
                self.pos += len(run)
                self.cells += len(run)
                self.stream.extend(run)
                self.counters.tokens_evaluated += len(run)
                self.logits_valid = True
                run = []
            if item is None:
                break
            with native.tokenize_multimodal(IMAGE_MARKER, [item], add_special=False) as chunks:
                image_chunks = [c for c in chunks if c.image]
                self._room_for(image_chunks[0].n_tokens)
                self._evaluate(image_chunks, [item])
        self.broken = True  # the replayed context has no text record: it cannot be extended

    def _room_for(self, n: int) -> None:
        if self.cells + n > self.n_ctx:
            raise EngineError(f"replay needs {self.cells + n} tokens but the context holds {self.n_ctx}", hint=CTX_HINT)
