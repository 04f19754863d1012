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

import sys

import mlx.core as mx

_SOURCE = r"""
  constexpr int BN = 32;
  constexpr int BD = 32;
  constexpr int VPT = D / BD;
  auto block = cooperative_groups::this_thread_block();
  auto warp = cooperative_groups::tiled_partition<32>(block);
  const int lane = warp.thread_rank();
  const int w = warp.meta_group_rank();
  const int b = blockIdx.z;
  const int h = blockIdx.x;
  const int H = q_shape[1];
  const int kvh = h / (H / k_shape[1]);
  const int stop = lens[b];
  const float scale_log2 = scale[0] * 1.44269504089f;
  const T* Q = q + b * q_strides[0] + h * q_strides[1];
  const T* K = k + b * k_strides[0] + kvh * k_strides[1];
  const T* V = v + b * v_strides[0] + kvh * v_strides[1];
  T* O = out + (b * H + h) * D;

  __shared__ float outs[BN][BD + 1];
  __shared__ float maxs[BN];
  __shared__ float sums[BN];
  float qv[VPT];
  float o[VPT];
  for (int j = 0; j < VPT; j++) {
    qv[j] = scale_log2 * static_cast<float>(Q[VPT * lane + j]);
    o[j] = 0.f;
  }
  float m = -1e30f;
  float s = 0.f;
  for (int i = w; i < stop; i += BN) {
    const T* kr = K + i * k_strides[2];
    float sc = 0.f;
    for (int j = 0; j < VPT; j++) {
      sc += qv[j] * static_cast<float>(kr[VPT * lane + j]);
    }
    sc = cooperative_groups::reduce(warp, sc, cooperative_groups::plus<float>());
    float nm = fmaxf(m, sc);
    float f = exp2f(m - nm);
    float e = exp2f(sc - nm);
    m = nm;
    s = s * f + e;
    const T* vr = V + i * v_strides[2];
    for (int j = 0; j < VPT; j++) {
      o[j] = o[j] * f + e * static_cast<float>(vr[VPT * lane + j]);
    }
  }
  if (lane == 0) {
    maxs[w] = m;
    sums[w] = s;
  }
  block.sync();
  float mw = maxs[lane];
  float nm = cooperative_groups::reduce(warp, mw, cooperative_groups::greater<float>());
  float f = exp2f(mw - nm);
  float tot = cooperative_groups::reduce(warp, sums[lane] * f, cooperative_groups::plus<float>());
  tot = tot == 0.f ? 0.f : 1.f / tot;
  for (int j = 0; j < VPT; j++) {
    outs[lane][w] = o[j];
    block.sync();
    float ot = outs[w][lane] * f;
    o[j] = cooperative_groups::reduce(warp, ot, cooperative_groups::plus<float>()) * tot;
    block.sync();
  }
  if (lane == 0) {
    for (int j = 0; j < VPT; j++) {
      O[VPT * w + j] = static_cast<T>(o[j]);
    }
  }
"""

_kernel = None


def available() -> bool:
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, lens: mx.array) -> mx.array:
    """q (B, H, 1, D); k, v (B, Hkv, capacity, D); row b attends to its keys [0, lens[b])."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(name="novamlx_ragged_sdpa", input_names=["q", "k", "v", "scale", "lens"],
                                      output_names=["out"], source=_SOURCE, ensure_row_contiguous=False,
                                      header="#include <cooperative_groups/reduce.h>\n")
    B, H, _, D = q.shape
    (out,) = _kernel(inputs=[q, k, v, mx.array([scale], mx.float32), lens.astype(mx.int32)],
                     template=[("T", q.dtype), ("D", D)], grid=(1024 * H, 1, B), threadgroup=(1024, 1, 1),
                     output_shapes=[(B, H, 1, D)], output_dtypes=[q.dtype])
    return out


HEAD_DIMS = (64, 96, 128, 256)


def install(model) -> bool:
    """Route the decode attention of `model`'s module through `attention` for caches whose
    `ragged` is true (their `offset` is each row's write column). False: not possible here."""
    module = sys.modules.get(type(model).__module__)
    orig = getattr(module, "scaled_dot_product_attention", None)
    if orig is None or not available():
        return False
    args = model.args
    dim = getattr(args, "head_dim", None) or args.hidden_size // args.num_attention_heads
    if dim not in HEAD_DIMS:
        return False
    if getattr(orig, "ragged", False):
        return True

    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):
        if getattr(cache, "ragged", False):
            return attention(queries, keys, values, scale, cache.offset + 1)
        return orig(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    sdpa.ragged = True
    module.scaled_dot_product_attention = sdpa
    return True
