"""What a text model's attention looks like, as this rank holds it."""
from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten


def attention_shape(model) -> tuple[int, int, int]:
    """(query heads, kv heads, head dim) of one layer; a sharded model keeps a slice of the heads,
    which its attention layers record (mlx-lm's `shard` divides n_heads / n_kv_heads)."""
    args = model.args
    attn = getattr(model.layers[0], "self_attn", None)
    heads = getattr(attn, "n_heads", None) or args.num_attention_heads
    kv_heads = getattr(attn, "n_kv_heads", None) or getattr(args, "num_key_value_heads", None) or heads
    dim = getattr(attn, "head_dim", None) or getattr(args, "head_dim", None) or args.hidden_size // args.num_attention_heads
    return heads, kv_heads, dim


def activation_dtype(model):
    """The dtype activations (and so keys and values) have: the first float parameter's."""
    for _, p in tree_flatten(model.parameters()):
        if p.dtype in (mx.float16, mx.bfloat16, mx.float32):
            return p.dtype
    return mx.float32
