"""GGML's block-quantized tensor types, dequantized in numpy (ggml-quants.c's dequantize_row_*): the classic
32-value types, the K-quants and the 4-bit non-linear IQ4_NL / IQ4_XS.

A tensor's bytes are a run of fixed-size blocks, each holding its own scales: 32 values for the
classic types, 256 (a super-block of 8 or 16 sub-blocks with 6- or 8-bit scales) for the
K-quants. Each function takes the blocks as a (n, block bytes) uint8 array and returns
(n, values per block) float32. The gguf package's numpy code is the oracle in the tests.
"""
from __future__ import annotations

import numpy as np

IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of every block, as (n, 1) float32."""
    return np.ascontiguousarray(b[:, at:at + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: low nibbles first, then high (the classic types' order)."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)


def q4_0(b):
    return _f16(b, 0) * (_nibbles(b[:, 2:18]) - 8)


def q4_1(b):
    return _f16(b, 0) * _nibbles(b[:, 4:20]) + _f16(b, 2)


def _q5_values(qh_bytes: np.ndarray, qs: np.ndarray) -> np.ndarray:
    qh = np.ascontiguousarray(qh_bytes).view("<u4")  # (n, 1): bit j is value j's fifth bit
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float32) * 16
    return _nibbles(qs) + high


def q5_0(b):
    return _f16(b, 0) * (_q5_values(b[:, 2:6], b[:, 6:22]) - 16)


def q5_1(b):
    return _f16(b, 0) * _q5_values(b[:, 4:8], b[:, 8:24]) + _f16(b, 2)


def q8_0(b):
    return _f16(b, 0) * np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(np.float32)


def iq4_nl(b):
    qs = b[:, 2:18]
    return _f16(b, 0) * IQ4_NL_VALUES[np.concatenate([qs & 0xF, qs >> 4], axis=1)]


def iq4_xs(b):
    """IQ4_NL's non-linear 4-bit values in 8 sub-blocks of 32, each with a 6-bit scale (low 4 bits
    in scales_l, high 2 in scales_h), minus 32."""
    d = _f16(b, 0)
    high = np.ascontiguousarray(b[:, 2:4]).view("<u2").astype(np.int32)  # (n, 1)
    low = b[:, 4:8].astype(np.int32)
    sub = np.arange(8)
    ls = ((low[:, sub // 2] >> (4 * (sub % 2))) & 0xF) | (((high >> (2 * sub)) & 3) << 4)  # (n, 8)
    qs = b[:, 8:136].reshape(-1, 8, 16)
    values = IQ4_NL_VALUES[np.concatenate([qs & 0xF, qs >> 4], axis=2)]  # (n, 8, 32)
    return (d[:, :, None] * (ls - 32)[:, :, None].astype(np.float32) * values).reshape(len(b), 256)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k4_apply(b, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: 4 chunks of 64 values, the first 32 of each on scale 2i, the next on 2i+1."""
    d, dmin = _f16(b, 0)[:, :, None], _f16(b, 2)[:, :, None]
    sc, mn = _scale_min_k4(b[:, 4:16])
    first = d * sc[:, 0::2, None] * lo - dmin * mn[:, 0::2, None]
    second = d * sc[:, 1::2, None] * hi - dmin * mn[:, 1::2, None]
    return np.stack([first, second], axis=2).reshape(len(b), 256)


def q4_k(b):
    qs = b[:, 16:144].reshape(-1, 4, 32)
    return _k4_apply(b, (qs & 0xF).astype(np.float32), (qs >> 4).astype(np.float32))


def q5_k(b):
    qh = b[:, 16:48][:, None, :]  # (n, 1, 32): chunk i's fifth bits are bits 2i and 2i+1
    qs = b[:, 48:176].reshape(-1, 4, 32)
    shift = (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    lo = (qs & 0xF) + 16 * ((qh >> shift) & 1)
    hi = (qs >> 4) + 16 * ((qh >> (shift + 1)) & 1)
    return _k4_apply(b, lo.astype(np.float32), hi.astype(np.float32))


def q6_k(b):
    d = _f16(b, 208)
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    halves = []
    for h in range(2):
        ql, qh, sc = b[:, 64 * h:64 * h + 64].astype(np.int16), b[:, 128 + 32 * h:160 + 32 * h].astype(np.int16), \
            scales[:, 8 * h:8 * h + 8]
        a, c = ql[:, :32], ql[:, 32:]
        quarters = [(a & 0xF) | ((qh & 3) << 4), (c & 0xF) | (((qh >> 2) & 3) << 4),
                    (a >> 4) | (((qh >> 4) & 3) << 4), (c >> 4) | (((qh >> 6) & 3) << 4)]
        for k, q in enumerate(quarters):  # values l of quarter k use scale 2k + l // 16
            halves.append(d * np.repeat(sc[:, 2 * k:2 * k + 2], 16, axis=1) * (q.astype(np.float32) - 32))
    return np.concatenate(halves, axis=1)


def _two_bit_runs(qs: np.ndarray, per_run) -> np.ndarray:
    """Q2_K/Q3_K: two halves of 128 values, each 4 shifts x 2 runs of 16 from 32 bytes of 2-bit
    values; `per_run(half, shift_index, run, q)` scales one run of 16."""
    out = []
    for h in range(2):
        q = qs[:, 32 * h:32 * h + 32]
        for j in range(4):
            for run in range(2):
                out.append(per_run(h, j, run, ((q[:, 16 * run:16 * run + 16] >> (2 * j)) & 3).astype(np.float32)))
    return np.concatenate(out, axis=1)


def q2_k(b):
    scales, d, dmin = b[:, 0:16], _f16(b, 80), _f16(b, 82)

    def run(h, j, r, q):
        sc = scales[:, 8 * h + 2 * j + r][:, None]
        return d * (sc & 0xF) * q - dmin * (sc >> 4)
    return _two_bit_runs(b[:, 16:80], run)


def _q3_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K: 16 six-bit scales packed in 12 bytes (ggml's kmask shuffle), minus 32."""
    aux = np.ascontiguousarray(s).view("<u4")  # (n, 3)
    a0, a1, tmp = aux[:, 0], aux[:, 1], aux[:, 2]
    m1, m2 = np.uint32(0x03030303), np.uint32(0x0F0F0F0F)
    words = np.stack([(a0 & m2) | ((tmp & m1) << 4), (a1 & m2) | (((tmp >> 2) & m1) << 4),
                      ((a0 >> 4) & m2) | (((tmp >> 4) & m1) << 4), ((a1 >> 4) & m2) | (((tmp >> 6) & m1) << 4)],
                     axis=1).astype("<u4")
    return np.ascontiguousarray(words).view(np.int8).astype(np.float32) - 32


def q3_k(b):
    hmask, d, scales = b[:, 0:32], _f16(b, 108), _q3_scales(b[:, 96:108])

    def run(h, j, r, q):
        high = (hmask[:, 16 * r:16 * r + 16] >> (4 * h + j)) & 1  # a clear bit means 4 to subtract
        return d * scales[:, 8 * h + 2 * j + r][:, None] * (q - 4 * (1 - high))
    return _two_bit_runs(b[:, 32:96], run)


# GGML type id -> (values per block, bytes per block, dequantizer, bits MLX keeps it in by default)
TYPES = {
    2: (32, 18, q4_0, 4), 3: (32, 20, q4_1, 4), 6: (32, 22, q5_0, 8), 7: (32, 24, q5_1, 8), 8: (32, 34, q8_0, 8),
    10: (256, 84, q2_k, 4), 11: (256, 110, q3_k, 4), 12: (256, 144, q4_k, 4), 13: (256, 176, q5_k, 8),
    14: (256, 210, q6_k, 8), 20: (32, 18, iq4_nl, 4), 23: (256, 136, iq4_xs, 4),
}
NAMES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K",
         14: "Q6_K", 20: "IQ4_NL", 23: "IQ4_XS"}


def dequantize(raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's raw bytes of GGML type `type_id` as float32 of `shape` (row-major, last axis fastest)."""
    per, size, fn, _ = TYPES[type_id]
    blocks = np.ascontiguousarray(raw).reshape(-1, size)
    return fn(blocks).reshape(shape)
