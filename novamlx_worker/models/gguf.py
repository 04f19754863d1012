"""GGUF files straight into mlx-lm model classes.

Files whose tensors are all F32/F16/Q4_0/Q4_1/Q8_0 go through `mx.load`: the quantized ones
come back already in MLX's affine layout (weight/scales/biases, group size 32) and stay
quantized. Any other type (the K-quants Q2_K..Q6_K most downloads use, Q5_0/Q5_1, IQ4_NL, IQ4_XS,
BF16) is read with the gguf package and dequantized block by block in numpy
(ggml_blocks.py; MLX's own GGUF reader refuses Q3_K/Q5_K and misreads Q4_K), then
re-quantized to MLX's affine format by a stated rule: types of about 4 bits or fewer
(Q2_K, Q3_K, Q4_K, Q4_0, Q4_1, IQ4_NL, IQ4_XS) to 4 bits, Q5_x, Q6_K and Q8_0 to 8 bits, groups of
32 (`--gguf-bits 4|8` forces one width). Dense loading (--dequantize, CPUs) keeps floats
and says what that costs. Q and K are in GGUF's rotary order, which `rope_traditional=True`
expects.
"""
from __future__ import annotations

import logging

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..text.tokenizer import TextTokenizer, from_gguf_metadata
from . import ggml_blocks

log = logging.getLogger("novamlx.gguf")

GROUP_SIZE = 32
MLX_NATIVE = {0, 1, 2, 3, 8}  # F32, F16, Q4_0, Q4_1, Q8_0: what mx.load keeps as they are
F32, F16, BF16 = 0, 1, 30

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",  # qwen3
}
# Gemma 3 has four norms per layer; llama.cpp names the one before the MLP ffn_norm, as llama's
# post-attention norm is named.
_GEMMA3_NAMES = {**_LAYER_NAMES, "post_attention_norm": "post_attention_layernorm",
                 "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
# Phi-3 fuses Q/K/V into one projection and gate/up into another, as its HF checkpoint does.
_PHI3_NAMES = {**_LAYER_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
_NAMES = {"gemma2": _GEMMA3_NAMES, "gemma3": _GEMMA3_NAMES, "phi3": _PHI3_NAMES}
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")  # mistral's GGUFs say "llama"
GEMMA = ("gemma2", "gemma3")
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
              "rope_factors_long": "rope_factors_long", "rope_factors_short": "rope_factors_short",  # phi3 longrope
              "rope_freqs": "rope_freqs"}  # llama 3.1+: per-frequency wavelength factors (its rope scaling)
ROPE_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight", "rope_freqs.weight")


def _num(meta, key, default=None):
    v = meta.get(key, default)
    return v.item() if hasattr(v, "item") else v


def hf_name(gguf_name: str, arch: str = "llama") -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        layer, name, suffix = parts[1], parts[2], ".".join(parts[3:])
        return f"model.layers.{layer}.{_NAMES.get(arch, _LAYER_NAMES)[name]}.{suffix}"
    return f"{_TOP_NAMES[parts[0]]}.{'.'.join(parts[1:])}"


def _from_gguf_norms(weights: dict, arch: str) -> dict:
    """Gemma multiplies by (1 + weight); llama.cpp's converter stores weight + 1 (ggml multiplies
    by the weight itself): take the 1 back off for mlx-lm's Gemma."""
    if arch not in GEMMA:
        return weights
    return {k: (v.astype(mx.float32) - 1).astype(v.dtype) if k.endswith("norm.weight") else v
            for k, v in weights.items()}


def model_config(meta: dict, weights: dict) -> dict:
    arch = meta["general.architecture"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported ({', '.join(ARCHITECTURES)} are; "
                         "convert the original model with mlx-lm instead)")
    g = lambda k, d=None: _num(meta, f"{arch}.{k}", d)  # noqa: E731
    n_heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    vocab = int(g("vocab_size", 0) or len(meta["tokenizer.ggml.tokens"]))
    config = {
        "model_type": "gemma3_text" if arch == "gemma3" else arch,
        "hidden_size": hidden,
        "num_hidden_layers": int(g("block_count")),
        "intermediate_size": int(g("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g("attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "max_position_embeddings": int(g("context_length", 4096)),
        "tie_word_embeddings": "lm_head.weight" not in weights,  # (llama.cpp: output.weight, renamed)
        # llama.cpp permutes Q/K for its interleaved rope; qwen GGUFs keep HF order.
        "rope_traditional": arch == "llama",
        "head_dim": int(g("attention.key_length", 0) or hidden // n_heads),
    }
    if "rope_freqs.weight" in weights:  # the factors themselves go into the rope after the model is built
        config["rope_scaling"] = {"rope_type": "llama3", "factor": float(mx.max(weights["rope_freqs.weight"]).item())}
    if arch == "gemma2":
        # mlx-lm's gemma2 attends over the whole context (no sliding window); the 46-layer 27B
        # scales queries by hidden / heads, the others by the head dimension (as llama.cpp does).
        config.update({"attn_logit_softcapping": float(g("attn_logit_softcapping", 50.0)),
                       "final_logit_softcapping": float(g("final_logit_softcapping", 30.0)),
                       "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
                       "query_pre_attn_scalar": hidden // n_heads if config["num_hidden_layers"] == 46
                       else config["head_dim"]})
    if arch == "phi3":
        config["partial_rotary_factor"] = int(g("rope.dimension_count", config["head_dim"])) / config["head_dim"]
        long = weights.get("rope_factors_long.weight")
        if long is not None:  # the 128k variants: LongRoPE factors ship as tensors
            short = weights.get("rope_factors_short.weight", long)
            config["rope_scaling"] = {"type": "longrope", "long_factor": np.array(long.astype(mx.float32)).tolist(),
                                      "short_factor": np.array(short.astype(mx.float32)).tolist()}
            config["original_max_position_embeddings"] = int(g("rope.scaling.original_context_length", 4096))
    if arch == "gemma3":
        # llama.cpp's own rules for what a Gemma 3 GGUF does not carry: every sixth layer is
        # global, local layers rotate at base 10,000, and the attention scale is the head
        # dimension's (the 62-layer 27B: hidden / heads).
        layers = config["num_hidden_layers"]
        config.update({"sliding_window": int(g("attention.sliding_window", 1024)), "sliding_window_pattern": 6,
                       "rope_local_base_freq": 10000.0, "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
                       "query_pre_attn_scalar": hidden // n_heads if layers == 62 else config["head_dim"]})
        if str(g("rope.scaling.type", "")) == "linear":
            config["rope_scaling"] = {"rope_type": "linear", "factor": float(g("rope.scaling.factor", 1.0))}
    return config


def _set_rope_freqs(model: nn.Module, factors: mx.array, base: float) -> None:
    """Llama 3.1+ GGUFs carry their rope scaling as one factor per frequency (llama.cpp divides
    each angle by it); mlx-lm's llama3 rope keeps the wavelengths those factors scale."""
    ropes = [m for _, m in model.named_modules() if hasattr(m, "_freqs")]
    if not ropes:
        raise ValueError("this GGUF's rope_freqs (llama 3.1 rope scaling) has no place in the model")
    for rope in ropes:
        dims = rope.dims
        rope._freqs = (base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)) * factors[: dims // 2]


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


def load_gguf(path: str, dequantize: bool = False, dtype=None, bits: int | None = None
              ) -> tuple[nn.Module, TextTokenizer, dict]:
    """bits: 4 or 8 to re-quantize every block-quantized tensor to that width (None: by type)."""
    from gguf import GGUFReader
    from mlx_lm.utils import _get_classes

    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents()) if "general.architecture" in reader.fields else ""
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported ({', '.join(ARCHITECTURES)} are; "
                         "convert the original model with mlx-lm instead)")
    if all(int(t.tensor_type) in MLX_NATIVE for t in reader.tensors):
        raw, meta = mx.load(path, return_metadata=True)
        weights = {hf_name(k, arch): v for k, v in raw.items()}
        quant = _quant_params(weights)
    else:
        meta = {name: field.contents() for name, field in reader.fields.items()}
        weights, quant = _read_blocks(reader, arch, dense=dequantize, bits=bits, dtype=dtype or mx.float32)
    config = model_config(meta, weights)
    rope_freqs = weights.get("rope_freqs.weight")
    weights = _from_gguf_norms({k: v for k, v in weights.items() if k not in ROPE_TENSORS}, arch)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if rope_freqs is not None:
        _set_rope_freqs(model, rope_freqs.astype(mx.float32), config["rope_theta"])
    if hasattr(model, "sanitize"):  # (gemma3_text: a missing lm_head means tied embeddings)
        weights = model.sanitize(weights)
    if quant:
        nn.quantize(model, class_predicate=lambda p, m: quant.get(p, False))
    model.load_weights(list(weights.items()), strict=True)
    if quant and dequantize:
        model = dequantize_model(model, dtype or mx.float32)
    elif dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    widths = sorted({q["bits"] for q in quant.values()})
    config["quantization"] = None if (dequantize or not quant) else {"group_size": GROUP_SIZE, "bits": widths[-1]}
    return model, from_gguf_metadata(meta), config


def _read_blocks(reader, arch: str, dense: bool, bits: int | None, dtype) -> tuple[dict, dict]:
    """Every tensor of a file mx.load cannot keep as it is: block-quantized ones dequantized
    (ggml_blocks) and re-quantized to MLX's affine layout, or kept dense in `dtype`."""
    weights, quant, kept, dense_bytes = {}, {}, {}, 0
    for t in reader.tensors:
        name, tid = hf_name(t.name, arch), int(t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions fastest first
        if tid in (F32, F16):
            weights[name] = mx.array(np.asarray(t.data).reshape(shape))
            continue
        if tid == BF16:
            weights[name] = mx.array(np.asarray(t.data).view(np.uint16).reshape(shape)).view(mx.bfloat16)
            continue
        if tid not in ggml_blocks.TYPES:
            raise ValueError(f"GGUF tensor {t.name} has type {getattr(t.tensor_type, 'name', tid)}, which is not "
                             f"supported (F32, F16, BF16, {', '.join(ggml_blocks.NAMES.values())} are)")
        w = mx.array(ggml_blocks.dequantize(t.data, tid, shape))
        kept[ggml_blocks.NAMES[tid]] = kept.get(ggml_blocks.NAMES[tid], 0) + 1
        if dense:
            weights[name] = w.astype(dtype)
            dense_bytes += weights[name].nbytes
            continue
        width = bits or ggml_blocks.TYPES[tid][3]
        base = name[: -len(".weight")]
        weights[name], weights[base + ".scales"], weights[base + ".biases"] = mx.quantize(
            w, group_size=GROUP_SIZE, bits=width)
        quant[base] = {"group_size": GROUP_SIZE, "bits": width, "mode": "affine"}
        mx.eval(weights[name])
    types = ", ".join(f"{n} x{c}" for n, c in sorted(kept.items()))
    if dense:
        log.info("GGUF %s dequantized to %s: %.2f GB of dense weights", types, dtype, dense_bytes / 1e9)
    else:
        log.info("GGUF %s re-quantized to MLX affine %s-bit, group %d", types,
                 "/".join(str(b) for b in sorted({q["bits"] for q in quant.values()})), GROUP_SIZE)
    return weights, quant


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
