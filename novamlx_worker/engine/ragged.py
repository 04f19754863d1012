"""Decode attention over rows of different lengths, without a mask array (CUDA).

In a batch, rows hold prompts of different lengths: mlx-lm's BatchKVCache left-pads them
and passes a boolean mask to attention. MLX's CUDA attention kernel takes no array mask,
so every masked decode step falls back to unfused matmul + softmax + matmul per layer.
This kernel is MLX's one-pass vector attention with one change: row b reads only its own
keys, columns [0, lens[b]). `install` routes a model's decode attention through it when
the cache says so (engine/batch.py's SlotKV on a CUDA GPU); everything else is left as it
was.
"""
from __future__ import annotations

import logging
import sys

import mlx.core as mx

from ..models.shape import activation_dtype, attention_shape

log = logging.getLogger(__name__)

# One block of 8 warps per (row, kv head): warp w takes keys w, w + 8, ... U at a time
# (all U loads in flight before any is used); each key is read once for all G query
# heads that share it (GQA), each head keeps its own online softmax, and the warps'
# partial results are combined through shared memory at the end.
_SOURCE = r"""
  constexpr int BN = 8;
  constexpr int VPT = D / 32;
  auto block = cooperative_groups::this_thread_block();
  auto warp = cooperative_groups::tiled_partition<32>(block);
  const int lane = warp.thread_rank();
  const int w = warp.meta_group_rank();
  const int b = blockIdx.z;
  const int kvh = blockIdx.x;
  const int H = q_shape[1];
  const int stop = lens[b];
  const float scale_log2 = scale[0] * 1.44269504089f;
  const T* K = k + b * k_strides[0] + kvh * k_strides[1] + VPT * lane;
  const T* V = v + b * v_strides[0] + kvh * v_strides[1] + VPT * lane;
  const int64_t ks = k_strides[2];
  const int64_t vs = v_strides[2];

  __shared__ float maxs[G][BN];
  __shared__ float sums[G][BN];
  __shared__ float part[BN][D];
  float qv[G][VPT];
  float o[G][VPT];
  float m[G];
  float s[G];
  for (int g = 0; g < G; g++) {
    const T* Q = q + b * q_strides[0] + (kvh * G + g) * q_strides[1];
    for (int j = 0; j < VPT; j++) {
      qv[g][j] = scale_log2 * static_cast<float>(Q[VPT * lane + j]);
      o[g][j] = 0.f;
    }
    m[g] = -1e30f;
    s[g] = 0.f;
  }
  for (int i = w; i < stop; i += U * BN) {
    float kf[U][VPT];
    float vf[U][VPT];
    for (int u = 0; u < U; u++) {
      const int iu = i + u * BN;
      const bool in = iu < stop;
      for (int j = 0; j < VPT; j++) {
        kf[u][j] = in ? static_cast<float>(K[iu * ks + j]) : 0.f;
        vf[u][j] = in ? static_cast<float>(V[iu * vs + j]) : 0.f;
      }
    }
    for (int g = 0; g < G; g++) {
      float a[U];
      float nm = m[g];
      for (int u = 0; u < U; u++) {
        float acc = 0.f;
        for (int j = 0; j < VPT; j++) {
          acc += qv[g][j] * kf[u][j];
        }
        acc = cooperative_groups::reduce(warp, acc, cooperative_groups::plus<float>());
        a[u] = (i + u * BN) < stop ? acc : -1e30f;
        nm = fmaxf(nm, a[u]);
      }
      const float f = exp2f(m[g] - nm);
      s[g] *= f;
      for (int j = 0; j < VPT; j++) {
        o[g][j] *= f;
      }
      for (int u = 0; u < U; u++) {
        const float e = exp2f(a[u] - nm);
        s[g] += e;
        for (int j = 0; j < VPT; j++) {
          o[g][j] += e * vf[u][j];
        }
      }
      m[g] = nm;
    }
  }
  if (lane == 0) {
    for (int g = 0; g < G; g++) {
      maxs[g][w] = m[g];
      sums[g][w] = s[g];
    }
  }
  block.sync();
  for (int g = 0; g < G; g++) {
    float nm = -1e30f;
    for (int x = 0; x < BN; x++) {
      nm = fmaxf(nm, maxs[g][x]);
    }
    float tot = 0.f;
    for (int x = 0; x < BN; x++) {
      tot += sums[g][x] * exp2f(maxs[g][x] - nm);
    }
    const float f = exp2f(m[g] - nm);
    for (int j = 0; j < VPT; j++) {
      part[w][VPT * lane + j] = o[g][j] * f;
    }
    block.sync();
    T* O = out + (b * H + kvh * G + g) * D;
    for (int d = block.thread_rank(); d < D; d += BN * 32) {
      float r = 0.f;
      for (int x = 0; x < BN; x++) {
        r += part[x][d];
      }
      O[d] = static_cast<T>(tot == 0.f ? 0.f : r / tot);
    }
    block.sync();
  }
"""

_kernel = None


def available() -> bool:
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


UNROLL = 2  # keys in flight per warp (bench_step --check times the choices)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, lens: mx.array, unroll: int | None = None) -> mx.array:
    """q (B, H, 1, D); k, v (B, Hkv, capacity, D); row b attends to its keys [0, lens[b])."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(name="novamlx_ragged_sdpa", input_names=["q", "k", "v", "scale", "lens"],
                                      output_names=["out"], source=_SOURCE, ensure_row_contiguous=False,
                                      header="#include <cooperative_groups/reduce.h>\n")
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    (out,) = _kernel(inputs=[q, k, v, mx.array([scale], mx.float32), lens.astype(mx.int32)],
                     template=[("T", q.dtype), ("D", D), ("G", H // kv_heads), ("U", unroll or UNROLL)], grid=(256 * kv_heads, 1, B),
                     threadgroup=(256, 1, 1),
                     output_shapes=[(B, H, 1, D)], output_dtypes=[q.dtype])
    return out


HEAD_DIMS = (64, 96, 128, 256)


def _warm(heads: int, kv_heads: int, dim: int, dtype) -> bool:
    """Compile the kernel for this model now (not on the first batched request), and check it
    against MLX's masked attention; a GPU where it fails keeps the mask path."""
    try:
        q = mx.random.normal((2, heads, 1, dim)).astype(dtype)
        k = mx.random.normal((2, kv_heads, 40, dim)).astype(dtype)
        v = mx.random.normal((2, kv_heads, 40, dim)).astype(dtype)
        lens = mx.array([40, 7])
        mask = (mx.arange(40)[None] < lens[:, None])[:, None, None, :]
        ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5, mask=mask)
        got = attention(q, k, v, dim ** -0.5, lens)
        return mx.allclose(ref.astype(mx.float32), got.astype(mx.float32), atol=0.05, rtol=0.05).item()
    except Exception as e:  # noqa: BLE001 - any compile/launch failure means: use the mask path
        log.warning("ragged attention kernel unavailable (%s); batched decode uses masked attention", e)
        return False


def install(model) -> bool:
    """Route the decode attention of `model`'s module through `attention` for caches whose
    `ragged` is true (their `lens`: each row's key count). False: not possible here."""
    module = sys.modules.get(type(model).__module__)
    orig = getattr(module, "scaled_dot_product_attention", None)
    if orig is None or not available():
        return False
    heads, kv_heads, dim = attention_shape(model)
    if dim not in HEAD_DIMS or heads % kv_heads:
        return False
    if not _warm(heads, kv_heads, dim, activation_dtype(model)):
        return False
    if getattr(orig, "ragged", False):
        return True

    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):
        if getattr(cache, "ragged", False):
            return attention(queries, keys, values, scale, cache.lens)
        return orig(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    sdpa.ragged = True
    module.scaled_dot_product_attention = sdpa
    return True
