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

BITS = (2, 3, 4, 6, 8)
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class KVFormat:
    bits: int = 0  # 0: not quantized
    group_size: int = 64

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    def parts(self, x) -> list[mx.array]:
        """A (B, heads, T, dim) array, or an already quantized (packed, scales, biases) tuple,
        as this format's parts."""
        if isinstance(x, (tuple, list)):
            return list(x)
        if not self.quantized:
            return [x]
        return list(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def part_shapes(self, dim: int, dtype) -> list[tuple[int, object]]:
        """(last dimension, dtype) of each part for head dimension `dim`."""
        if not self.quantized:
            return [(dim, dtype)]
        return [(dim * self.bits // 32, mx.uint32), (dim // self.group_size, dtype), (dim // self.group_size, dtype)]


def checked(bits: int, group_size: int) -> KVFormat:
    if bits and bits not in BITS:
        raise ValueError(f"kv_bits {bits}: use one of {BITS} (0: off)")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"kv_group_size {group_size}: use one of {GROUP_SIZES}")
    return KVFormat(bits, group_size)
