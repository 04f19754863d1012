"""How a model's KV cache is stored: plain (the activation dtype) or quantized (kv_bits 2-8,
groups of kv_group_size along the head dimension, as mlx-lm's QuantizedKVCache stores it:
packed uint32 words plus a scale and a bias per group, each token quantized on its own).

A layer's keys (or values) are a list of parts: [array] plain, [packed, scales, biases]
quantized. The slot batch and the solo path read the format from here; the KV budget prices
it with models.pool.kv_bytes_per_token(lm, bits, group_size).
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, KVCache, QuantizedKVCache, RotatingKVCache, make_prompt_cache

from .state_slots import honours_lengths

BITS = (2, 3, 4, 6, 8)
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class KVFormat:
    bits: int = 0  # 0: not quantized
    group_size: int = 64
    contiguous: bool = False  # attention reads contiguous copies (a device without strided kernels)

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    def parts(self, x) -> list[mx.array]:
        """A (B, heads, T, dim) array, or an already quantized (packed, scales, biases) tuple,
        as this format's parts."""
        if isinstance(x, (tuple, list)) or not self.quantized:
            return parts_of(x)
        return list(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def part_shapes(self, dim: int, dtype) -> list[tuple[int, object]]:
        """(last dimension, dtype) of each part for head dimension `dim`."""
        if not self.quantized:
            return [(dim, dtype)]
        return [(dim * self.bits // 32, mx.uint32), (dim // self.group_size, dtype), (dim // self.group_size, dtype)]


def plain_kv(model) -> bool:
    """Whether every layer of the model keeps plain KV (what prefix blocks, slots and cutting back
    need), not a sliding window or SSM state."""
    return all(type(c) is KVCache for c in make_prompt_cache(model))


STATE = "state"  # a layer kind: recurrent state (state_slots.py)


def slot_layers(model) -> list | None:
    """What each layer keeps in the slot batch: None (plain KV), its window (a sliding window,
    ring.py) or STATE (SSM / convolution state, state_slots.py); None when some layer keeps
    anything else (attention sinks, nested caches), its state cannot stop mid-step, or no layer
    is attention (nothing would say how many tokens a state holds)."""
    out = []
    for c in make_prompt_cache(model):
        if type(c) is KVCache:
            out.append(None)
        elif type(c) is RotatingKVCache and c.keep == 0:
            out.append(c.max_size)
        elif type(c) is ArraysCache and honours_lengths(model):
            out.append(STATE)
        else:
            return None
    # a cache's token count is its attention layers' offset (held): a model of state alone has none
    return out if any(k != STATE for k in out) else None


def held(cache: list) -> int:
    """Tokens a cache list holds: its attention layers' offset (0 when no layer says; SSM and
    convolution state keep no count)."""
    return max((c.offset for c in cache if isinstance(getattr(c, "offset", None), int)), default=0)


def parts_of(x) -> list[mx.array]:
    """A cache's keys or values as parts: a quantized cache's tuple, or one array."""
    return list(x) if isinstance(x, (tuple, list)) else [x]


def support(fmt: KVFormat, heads: int, kv_heads: int, head_dim: int, dtype) -> str | None:
    """How this device attends over quantized KV of the model's shape, tried once as mlx-lm's
    quantized attention runs it on a cache's views: "views" (Metal, CPU), "contiguous" (MLX
    0.32's CUDA backend has no quantized_matmul kernel for strided views of a larger buffer,
    only for contiguous arrays), or None (not at all: the KV stays unquantized)."""
    from mlx_lm.models.base import quantized_scaled_dot_product_attention

    def attend(copy: bool) -> bool:
        try:
            for rows, length in ((1, 1), (4, 1), (1, 8)):
                full = mx.quantize(mx.ones((rows, kv_heads, 128, head_dim), dtype), group_size=fmt.group_size,
                                   bits=fmt.bits)
                kv = tuple(mx.contiguous(x[:, :, :65]) if copy else x[:, :, :65] for x in full)
                q = mx.ones((rows, heads, length, head_dim), dtype)
                mx.eval(quantized_scaled_dot_product_attention(q, kv, kv, scale=1.0, mask=None,
                                                               group_size=fmt.group_size, bits=fmt.bits))
            return True
        except (RuntimeError, ValueError):
            return False

    return "views" if attend(False) else "contiguous" if attend(True) else None


class ContiguousQuantizedKVCache(QuantizedKVCache):
    """mlx-lm's quantized cache, handing attention contiguous copies (see `support`)."""

    def update_and_fetch(self, keys, values):
        k, v = super().update_and_fetch(keys, values)
        return tuple(mx.contiguous(x) for x in k), tuple(mx.contiguous(x) for x in v)


def checked(bits: int, group_size: int) -> KVFormat:
    if bits and bits not in BITS:
        raise ValueError(f"kv_bits {bits}: use one of {BITS} (0: off)")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"kv_group_size {group_size}: use one of {GROUP_SIZES}")
    return KVFormat(bits, group_size)
