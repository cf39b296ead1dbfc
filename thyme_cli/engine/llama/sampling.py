"""Sampler chains for adaptive temperature sampling (the paper's GRPO-ATS, applied at inference).

Two llama.cpp sampler chains: a greedy one used inside ``<code>...</code>`` (code must be exact)
and a warm one (top-k, top-p, min-p, temperature, seeded draw) used elsewhere. The decode loop
picks the chain per token from the in-code state; the switch costs nothing. When a repetition
penalty is on, the chain that did not sample still sees the token so both keep the same history.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from thyme_cli.engine.settings import SamplingOptions


def _chain() -> Any:
    return llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())


def _add(chain: Any, sampler: Any) -> None:
    llama_cpp.llama_sampler_chain_add(chain, sampler)


class AtsSamplers:
    """The greedy (code) and warm (prose) chains of one conversation."""

    def __init__(self, options: SamplingOptions, n_vocab: int) -> None:
        self.options = options
        self.code = self._build(options, n_vocab, greedy=True)
        self.prose = self.code if options.greedy else self._build(options, n_vocab, greedy=False)
        self.shared_history = options.repeat_penalty != 1.0 and self.prose is not self.code

    @staticmethod
    def _build(o: SamplingOptions, n_vocab: int, *, greedy: bool) -> Any:
        chain = _chain()
        if o.logit_bias:
            items = [llama_cpp.llama_logit_bias(token, value) for token, value in o.logit_bias.items()]
            bias = (llama_cpp.llama_logit_bias * len(items))(*items)
            _add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(o.logit_bias), bias))
        if o.repeat_penalty != 1.0:
            # The 0.3.36 binding declares a leading n_vocab that current llama.cpp dropped; ints and
            # floats travel in separate registers, so passing last_n twice is right for both.
            last_n = o.repeat_last_n
            _add(chain, llama_cpp.llama_sampler_init_penalties(last_n, last_n, o.repeat_penalty, 0.0, 0.0))
        if greedy:
            _add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if o.top_k > 0:
            _add(chain, llama_cpp.llama_sampler_init_top_k(o.top_k))
        if o.top_p < 1.0:
            _add(chain, llama_cpp.llama_sampler_init_top_p(o.top_p, 1))
        if o.min_p > 0.0:
            _add(chain, llama_cpp.llama_sampler_init_min_p(o.min_p, 1))
        _add(chain, llama_cpp.llama_sampler_init_temp(o.temperature))
        _add(chain, llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(o.seed).value))
        return chain

    def accept_other(self, used: Any, token: int) -> None:
        """Let the chain that did not sample see the token too (penalty history)."""
        other = self.prose if used is self.code else self.code
        llama_cpp.llama_sampler_accept(other, token)

    def reset(self) -> None:
        """Fresh state for a new question: penalty history cleared, RNG back to the seed."""
        llama_cpp.llama_sampler_reset(self.code)
        if self.prose is not self.code:
            llama_cpp.llama_sampler_reset(self.prose)

    def close(self) -> None:
        if self.code is not None:
            llama_cpp.llama_sampler_free(self.code)
        if self.prose is not None and self.prose is not self.code:
            llama_cpp.llama_sampler_free(self.prose)
        self.code = self.prose = None
