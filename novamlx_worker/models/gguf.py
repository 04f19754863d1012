"""GGUF files straight into mlx-lm model classes.

`mx.load` reads GGUF tensors; Q4_0/Q4_1/Q8_0 come back already in MLX's affine
quantized layout (weight/scales/biases, group size 32) and stay quantized; F16/F32
stay dense. Q and K are in GGUF's rotary order, which `rope_traditional=True` expects.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..text.tokenizer import TextTokenizer, from_gguf_metadata

GROUP_SIZE = 32

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _num(meta, key, default=None):
    v = meta.get(key, default)
    return v.item() if hasattr(v, "item") else v


def hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        layer, name, suffix = parts[1], parts[2], ".".join(parts[3:])
        return f"model.layers.{layer}.{_LAYER_NAMES[name]}.{suffix}"
    return f"{_TOP_NAMES[parts[0]]}.{'.'.join(parts[1:])}"


def model_config(meta: dict, weights: dict) -> dict:
    arch = meta["general.architecture"]
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"GGUF architecture {arch!r} is not supported (llama, qwen2 are)")
    g = lambda k, d=None: _num(meta, f"{arch}.{k}", d)  # noqa: E731
    n_heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    vocab = int(g("vocab_size", 0) or len(meta["tokenizer.ggml.tokens"]))
    config = {
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": int(g("block_count")),
        "intermediate_size": int(g("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g("attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "max_position_embeddings": int(g("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in weights,
        # llama.cpp permutes Q/K for its interleaved rope; qwen2 GGUFs keep HF order.
        "rope_traditional": arch == "llama",
    }
    if arch == "llama":
        config["head_dim"] = hidden // n_heads
    return config


def _quant_params(weights: dict) -> dict[str, dict]:
    """Bits per quantized module, inferred from the packed shapes (they differ per tensor)."""
    out = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        base = name[: -len(".scales")]
        w = weights[base + ".weight"]
        bits = w.shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
        out[base] = {"group_size": GROUP_SIZE, "bits": int(bits), "mode": "affine"}
    return out


def load_gguf(path: str, dequantize: bool = False, dtype=None) -> tuple[nn.Module, TextTokenizer, dict]:
    from mlx_lm.utils import _get_classes

    raw, meta = mx.load(path, return_metadata=True)
    weights = {hf_name(k): v for k, v in raw.items()}
    config = model_config(meta, weights)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    quant = _quant_params(weights)
    if quant:
        nn.quantize(model, class_predicate=lambda p, m: quant.get(p, False))
    model.load_weights(list(weights.items()), strict=True)
    if quant and dequantize:
        model = dequantize_model(model, dtype or mx.float32)
    elif dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    config["quantization"] = None if (dequantize or not quant) else {"group_size": GROUP_SIZE, "bits": 4}
    return model, from_gguf_metadata(meta), config


def dequantize_model(model: nn.Module, dtype=mx.float32) -> nn.Module:
    """Replace quantized layers by dense ones (faster on CPU, where quantized matmul is slow)."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            w = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits).astype(dtype)
            if isinstance(module, nn.QuantizedLinear):
                dense = nn.Linear(w.shape[1], w.shape[0], bias="bias" in module)
                dense.weight = w
                if "bias" in module:
                    dense.bias = module.bias.astype(dtype)
            else:
                dense = nn.Embedding(w.shape[0], w.shape[1])
                dense.weight = w
            layers.append((name, dense))
    if layers:
        model.update_modules(nn.utils.tree_unflatten(layers))
    model.set_dtype(dtype)
    return model
