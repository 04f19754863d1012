"""Perplexity of a text under a model, in chunks that run between decode steps (jobs.py).

The model's own logits over the text fed through a KV cache `chunk` tokens at a time: each
position's log-probability of the next token, summed. Equal to mlx-lm's eval_ppl over the
same tokens as one row (exp of the mean cross-entropy), up to float rounding.
"""
from __future__ import annotations

import math
from typing import Generator

import mlx.core as mx
from mlx_lm.generate import maybe_quantize_kv_cache
from mlx_lm.models.cache import make_prompt_cache

from ..sampling import log_probs


def perplexity_steps(model, ids: list[int], chunk: int = 512, kv_bits: int = 0, kv_group: int = 64) -> Generator:
    """Yields after each chunk; returns {"perplexity", "tokens", "predicted", "nll"}. kv_bits:
    the cache quantized as the engine keeps it (bench_kv)."""
    cache = make_prompt_cache(model)
    nll, n = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        x, y = ids[start:start + chunk], ids[start + 1:start + chunk + 1]
        logits = model(mx.array(x)[None], cache=cache)[0, : len(y)].astype(mx.float32)
        if kv_bits:
            maybe_quantize_kv_cache(cache, 0, kv_group, kv_bits)
        lp = log_probs(logits)
        nll -= mx.take_along_axis(lp, mx.array(y)[:, None], axis=-1).sum().item()
        n += len(y)
        yield
    return {"perplexity": math.exp(nll / n), "tokens": len(ids), "predicted": n, "nll": nll}


def perplexity(model, ids: list[int], chunk: int = 512, kv_bits: int = 0, kv_group: int = 64) -> float:
    steps = perplexity_steps(model, ids, chunk, kv_bits, kv_group)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value["perplexity"]
