"""Several sequences of one llama.cpp context, decoded together: one llama_decode per step.

A CPU decode step is bound by memory bandwidth, so one token for each of N sequences costs little
more than one token. ``fork`` shares an evaluated prefix, ``step`` evaluates one token per live
sequence, ``sample`` draws each from its own logits (docs/engine.md, "Never paying twice").
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from thyme_cli.engine.llama.native import Native
from thyme_cli.errors import EngineError


class ParallelDecoder:
    """One token per live sequence per llama_decode, on a Native context made with n_seq > 1."""

    def __init__(self, native: Native) -> None:
        self.native = native
        self.n_seq = native.n_seq_max
        self._batch: Any = llama_cpp.llama_batch_init(self.n_seq, 0, 1)
        b = self._batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_seq,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_seq,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(self.n_seq,))
        for i in range(self.n_seq):
            b.n_seq_id[i] = 1
        self._rows: dict[int, int] = {}  # sequence -> its row of logits after the last step

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def __enter__(self) -> ParallelDecoder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def fork(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Let sequence ``dst`` share ``src``'s cells in [p0, p1) (all by default); its first
        sample reads the logits of the last evaluated token (``src == dst`` only sets that up)."""
        if not 0 <= dst < self.n_seq:
            raise EngineError(f"sequence {dst} is outside this context's {self.n_seq} sequences")
        if dst != src:
            llama_cpp.llama_memory_seq_rm(self.native.mem, dst, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.native.mem, src, dst, p0, p1)
        self._rows[dst] = -1  # the logits of src's last evaluated token (read with index -1)

    def step(self, items: Sequence[tuple[int, int, int]]) -> None:
        """Evaluate one (sequence, token, position) per live sequence, all in one llama_decode."""
        n = len(items)
        if not 0 < n <= self.n_seq:
            raise EngineError(f"a step takes 1 to {self.n_seq} sequences, got {n}")
        b = self._batch
        for i, (seq, token, pos) in enumerate(items):
            self._tok[i] = token
            self._pos[i] = pos
            b.seq_id[i][0] = seq
        self._out[:n] = 1
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self.native.ctx, b)
        self.native.native_s += time.perf_counter() - t0
        if rc != 0:
            raise EngineError(
                f"llama_decode failed with code {rc} for {n} sequences",
                hint="raise --ctx or decode fewer sequences together",
            )
        self._rows = {seq: i for i, (seq, _, _) in enumerate(items)}

    def logprob(self, seq: int, token: int) -> float:
        """log p(token) under the unmodified logits of ``seq``'s row of the last step."""
        row = self._rows.get(seq, -1)
        ptr = llama_cpp.llama_get_logits_ith(self.native.ctx, row)
        return token_logprob(np.ctypeslib.as_array(ptr, shape=(self.native.n_vocab,)), token)

    def sample(self, seq: int, sampler: Any) -> int:
        """The next token of ``seq`` from its row of the last step (or the forked prefix's logits)."""
        row = self._rows.get(seq)
        if row is None:
            raise EngineError(f"sequence {seq} has no logits: it was not in the last step")
        t0 = time.perf_counter()
        token: int = llama_cpp.llama_sampler_sample(sampler, self.native.ctx, row)
        self.native.native_s += time.perf_counter() - t0
        return token


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log-softmax of ``logits`` at ``token`` (for ranking sampled trajectories)."""
    top = float(logits.max())
    return float(logits[token]) - top - float(np.log(np.exp(logits - top, dtype=np.float64).sum()))


def sample_from_logits(sampler: Any, logits: np.ndarray) -> int:
    """What llama_sampler_sample does, on a saved copy of one row of logits: apply the chain to
    every token's logit, take the selected one, let the chain accept it."""
    n = logits.shape[0]
    data = (llama_cpp.llama_token_data * n)()
    view = np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctypes.c_float)), shape=(n * 3,))
    view[1::3] = logits
    ids = np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctypes.c_int32)), shape=(n * 3,))
    ids[0::3] = np.arange(n, dtype=np.int32)
    arr = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
    if not 0 <= arr.selected < n:
        raise EngineError("the sampler chain selected no token")
    token = int(arr.data[arr.selected].id)
    llama_cpp.llama_sampler_accept(sampler, token)
    return token


class StepRounds:
    """Lets conversations in different threads decode together: each generating sequence hands
    in its next token; when every generating sequence has (or one waited ``patience_s``), one
    thread evaluates them all in one llama_decode and samples each sequence's next token from its
    own row, under the engine's lock (so no other evaluation overwrites the logits in between).
    """

    def __init__(self, native: Native, lock: threading.RLock, *, patience_s: float = 0.05) -> None:
        self.decoder = ParallelDecoder(native)
        self.cond = threading.Condition(lock)
        self.patience_s = patience_s
        self.active: set[int] = set()
        self._pending: dict[int, tuple[int, int, Any]] = {}
        self._results: dict[int, tuple[int, float] | BaseException | None] = {}

    def close(self) -> None:
        self.decoder.close()

    def enter(self, seq: int) -> None:
        with self.cond:
            self.active.add(seq)

    def leave(self, seq: int) -> None:
        with self.cond:
            self.active.discard(seq)
            self._pending.pop(seq, None)
            self.cond.notify_all()  # the others may now be complete without this one

    def decode(self, seq: int, token: int, pos: int, sampler: Any | None) -> tuple[int, float] | None:
        """Evaluate ``token`` at ``pos`` for ``seq`` in the next round; then the sequence's next
        token drawn with ``sampler`` and its log-probability (None: nothing is drawn, e.g. after a
        stop string)."""
        with self.cond:
            self._pending[seq] = (token, pos, sampler)
            deadline = time.monotonic() + self.patience_s
            while seq not in self._results:
                waiting_on = self.active - set(self._pending)
                if not waiting_on or time.monotonic() >= deadline:
                    self._round()
                    break
                self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            result = self._results.pop(seq)
        if isinstance(result, BaseException):
            raise result
        return result

    def _round(self) -> None:
        """Evaluate everything pending in one step; called with the lock held."""
        pending, self._pending = self._pending, {}
        seqs = sorted(pending)
        try:
            self.decoder.step([(s, pending[s][0], pending[s][1]) for s in seqs])
            for s in seqs:
                sampler = pending[s][2]
                if sampler is None:
                    self._results[s] = None
                else:
                    drawn = self.decoder.sample(s, sampler)
                    self._results[s] = (drawn, self.decoder.logprob(s, drawn))
        except BaseException as e:  # every waiting sequence hears of the failure
            for s in seqs:
                self._results[s] = e
        self.cond.notify_all()
