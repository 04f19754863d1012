"""GGUF loading: our logits equal mlx-lm's llama on the same (dequantized) weights."""
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import llama

from novamlx_worker.models.gguf import load_gguf
from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_gguf

PROMPT = [1, 400, 2300, 15, 9000, 77, 31000, 5]


def reference_logits(weights: dict) -> np.ndarray:
    args = llama.ModelArgs.from_dict({**TINY_LLAMA, "rope_traditional": False})
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    return np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))


@pytest.mark.parametrize("qtype,tol", [("F32", 1e-4), ("F16", 1e-3), ("Q8_0", 2e-2), ("Q4_0", 2e-2), ("Q4_1", 2e-2)])
@pytest.mark.parametrize("dequantize", [False, True])
def test_gguf_logits_match_mlx_lm(tmp_path, qtype, tol, dequantize):
    path, stored = build_tiny_gguf(tmp_path / f"tiny-{qtype}.gguf", qtype)
    model, tok, cfg = load_gguf(str(path), dequantize=dequantize)
    if qtype.startswith("Q") and not dequantize:
        assert cfg["quantization"] is not None  # quantized weights stay quantized
        assert any("scales" in k for k, _ in __import__("mlx.utils").utils.tree_flatten(model.parameters()))
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    ref = reference_logits(stored)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() / scale < tol
    # Same argmax everywhere: the rope order and the tensor mapping are right.
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.85
    assert tok.encode("Hello world") == [19556, 905]


def test_every_block_type_dequantizes_as_the_gguf_package_does():
    """ggml_blocks against the gguf package's numpy reference, bit for bit, on random blocks
    (random bytes: scales of every magnitude, the odd NaN where a float16 scale is one)."""
    import gguf

    from novamlx_worker.models import ggml_blocks

    rng = np.random.default_rng(7)
    for tid, (per, size, _, _) in ggml_blocks.TYPES.items():
        qt = gguf.GGMLQuantizationType(tid)
        assert gguf.GGML_QUANT_SIZES[qt] == (per, size)
        raw = rng.integers(0, 256, size=(6, 3 * size), dtype=np.uint8)
        with np.errstate(all="ignore"):
            want = gguf.quants.dequantize(raw, qt)
            got = ggml_blocks.dequantize(raw, tid, want.shape)
        np.testing.assert_array_equal(got, want, err_msg=ggml_blocks.NAMES[tid])


def reference_logits_for(cfg: dict, weights: dict) -> np.ndarray:
    model = llama.Model(llama.ModelArgs.from_dict({**cfg, "rope_traditional": False}))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    return np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"])
def test_kquant_gguf_loads_exactly_dense_and_requantized_by_the_rule(tmp_path, qtype):
    """A K-quant GGUF (MLX's own reader refuses Q3_K/Q5_K and misreads Q4_K): dense, the logits
    equal mlx-lm's llama on the file's exact values; kept quantized, each tensor is MLX affine at
    the stated width (4 bits for Q2_K..Q4_K, 8 for Q5_K/Q6_K, or the width asked for)."""
    from mlx.utils import tree_flatten

    from tests.fixtures.tiny_models import TINY_LLAMA_256

    path, stored = build_tiny_gguf(tmp_path / f"tiny-{qtype}.gguf", qtype, cfg=TINY_LLAMA_256)
    ref = reference_logits_for(TINY_LLAMA_256, stored)
    dense, tok, cfg = load_gguf(str(path), dequantize=True)
    ours = np.array(dense(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4 and cfg["quantization"] is None
    assert tok.encode("Hello world") == [19556, 905]

    model, _, cfg = load_gguf(str(path))
    params = dict(tree_flatten(model.parameters()))
    want_bits = {"Q2_K": 4, "Q3_K": 4, "Q4_K": 4, "Q5_K": 8, "Q6_K": 8}
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"):
        kind = qtype if qtype != "Q4_K_M" else ("Q6_K" if ("v_proj" in name or "down_proj" in name) else "Q4_K")
        w, scales = params[name + ".weight"], params[name + ".scales"]
        assert w.shape[-1] * 32 // (scales.shape[-1] * 32) == want_bits[kind], name
    quantized = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    err = np.abs(quantized - ref).max() / np.abs(ref).max()
    assert err < (0.05 if qtype in ("Q5_K", "Q6_K") else 0.25)  # re-quantization error, 8- vs 4-bit

    forced, _, cfg = load_gguf(str(path), bits=8)
    assert cfg["quantization"]["bits"] == 8
    assert np.abs(np.array(forced(mx.array(PROMPT)[None])[0].astype(mx.float32)) - ref).max() / np.abs(ref).max() < 0.05


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize("qtype,tol", [("F32", 1e-4), ("Q8_0", 3e-2), ("Q4_K_M", 1e-4)])
def test_qwen_gguf_logits_match_mlx_lm(tmp_path, arch, qtype, tol):
    """qwen2 (q/k/v biases) and qwen3 (q/k norms, head_dim from attention.key_length): the
    dense-loaded GGUF's logits equal mlx-lm's own architecture on the file's values."""
    import importlib

    from tests.fixtures.tiny_models import TINY_LLAMA_256

    path, stored = build_tiny_gguf(tmp_path / f"tiny-{arch}.gguf", qtype, cfg=TINY_LLAMA_256, arch=arch)
    family = importlib.import_module(f"mlx_lm.models.{arch}")
    ref_model = family.Model(family.ModelArgs.from_dict({**TINY_LLAMA_256, "model_type": arch}))
    ref_model.load_weights([(k, mx.array(v)) for k, v in stored.items()], strict=True)
    ref = np.array(ref_model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    model, _, cfg = load_gguf(str(path), dequantize=True)
    assert cfg["model_type"] == arch and type(model).__module__ == family.__name__
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < tol
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.85


def test_unknown_gguf_architecture_is_refused_by_name(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((8, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="'mamba' is not supported"):
        load_gguf(str(tmp_path / "x.gguf"))


@pytest.mark.parametrize("qtype", ["F32", "Q4_K_M"])
def test_gemma3_gguf_logits_match_mlx_lm(tmp_path, qtype):
    """Gemma 3 (text): four norms per layer stored as weight + 1 by llama.cpp, q/k norms, sliding
    windows every layer but each sixth, tied embeddings: the dense-loaded GGUF equals mlx-lm's
    gemma3_text on the file's values, past the window."""
    from mlx_lm.models import gemma3_text

    from tests.fixtures.tiny_models import TINY_LLAMA_256

    cfg = {**TINY_LLAMA_256, "num_hidden_layers": 7, "sliding_window": 4}
    path, stored = build_tiny_gguf(tmp_path / "tiny-gemma3.gguf", qtype, cfg=cfg, arch="gemma3")
    ref_cfg = {**cfg, "model_type": "gemma3_text", "sliding_window_pattern": 6, "query_pre_attn_scalar": 64,
               "rope_local_base_freq": 10000.0}
    ref_model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(ref_cfg))
    ref_model.load_weights([(k, mx.array(v)) for k, v in ref_model.sanitize(dict(stored)).items()], strict=True)
    ref = np.array(ref_model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    model, _, got_cfg = load_gguf(str(path), dequantize=True)
    assert got_cfg["model_type"] == "gemma3_text" and got_cfg["sliding_window"] == 4
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


@pytest.mark.parametrize("qtype", ["F32", "Q4_K_M"])
def test_gemma2_gguf_logits_match_mlx_lm(tmp_path, qtype):
    """Gemma 2: four norms stored as weight + 1, attention and final logit soft-caps from the
    metadata, no q/k norms, tied embeddings: the dense-loaded GGUF equals mlx-lm's gemma2."""
    from mlx_lm.models import gemma2

    from tests.fixtures.tiny_models import TINY_LLAMA_256

    cfg = {**TINY_LLAMA_256, "attn_logit_softcapping": 20.0, "final_logit_softcapping": 5.0}
    path, stored = build_tiny_gguf(tmp_path / "tiny-gemma2.gguf", qtype, cfg=cfg, arch="gemma2")
    ref_cfg = {**cfg, "model_type": "gemma2", "query_pre_attn_scalar": 64}
    ref_model = gemma2.Model(gemma2.ModelArgs.from_dict(ref_cfg))
    ref_model.load_weights([(k, mx.array(v)) for k, v in stored.items()], strict=True)
    ref = np.array(ref_model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    model, _, got = load_gguf(str(path), dequantize=True)
    assert got["model_type"] == "gemma2" and got["attn_logit_softcapping"] == 20.0 and got["final_logit_softcapping"] == 5.0
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
    assert np.abs(ours).max() <= 5.0 + 1e-4  # the final soft-cap is applied


@pytest.mark.parametrize("qtype", ["F32", "Q4_K_M"])
@pytest.mark.parametrize("rotary", [1.0, 0.5])
def test_phi3_gguf_logits_match_mlx_lm(tmp_path, qtype, rotary):
    """Phi-3: fused qkv and gate/up tensors, HF rotary order, partial rotary dimension from
    rope.dimension_count, an untied output: equals mlx-lm's phi3 on the file's values."""
    from mlx_lm.models import phi3

    from tests.fixtures.tiny_models import TINY_LLAMA_256

    cfg = {**TINY_LLAMA_256, "partial_rotary_factor": rotary, "tie_word_embeddings": False}
    path, stored = build_tiny_gguf(tmp_path / "tiny-phi3.gguf", qtype, cfg=cfg, arch="phi3", untied=True)
    ref_model = phi3.Model(phi3.ModelArgs.from_dict({**cfg, "model_type": "phi3"}))
    ref_model.load_weights([(k, mx.array(v)) for k, v in stored.items()], strict=True)
    ref = np.array(ref_model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    model, _, got = load_gguf(str(path), dequantize=True)
    assert got["model_type"] == "phi3" and got["partial_rotary_factor"] == rotary and not got["tie_word_embeddings"]
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_an_untied_output_matrix_is_used(tmp_path):
    """Llama 3's GGUFs carry output.weight apart from token_embd: the model must use it (an earlier
    loader took every file as tied and dropped it)."""
    path, stored = build_tiny_gguf(tmp_path / "tiny-untied.gguf", "F32", untied=True)
    args = llama.ModelArgs.from_dict({**TINY_LLAMA, "rope_traditional": False, "tie_word_embeddings": False})
    ref_model = llama.Model(args)
    ref_model.load_weights([(k, mx.array(v)) for k, v in stored.items()], strict=True)
    ref = np.array(ref_model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    model, _, cfg = load_gguf(str(path), dequantize=True)
    assert cfg["tie_word_embeddings"] is False
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_llama3_rope_freqs_are_the_rope_scaling(tmp_path):
    """Llama 3.1+ GGUFs carry their rope scaling as a rope_freqs tensor (one factor per frequency,
    as llama.cpp's converter computes it): the model equals mlx-lm's llama with that llama3 scaling."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hd = TINY_LLAMA["head_dim"]
    factors = []
    for f in 1.0 / TINY_LLAMA["rope_theta"] ** (np.arange(0, hd, 2) / hd):
        wavelen = 2 * np.pi / f
        if wavelen < 64 / 4.0:
            factors.append(1.0)
        elif wavelen > 64 / 1.0:
            factors.append(8.0)
        else:
            smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / 8.0 + smooth))
    assert 1.0 in factors and 8.0 in factors and any(1 < x < 8 for x in factors)  # all three regimes
    path, stored = build_tiny_gguf(tmp_path / "tiny-llama31.gguf", "F32", extra={"rope_freqs.weight": factors})
    ref_model = llama.Model(llama.ModelArgs.from_dict({**TINY_LLAMA, "rope_traditional": False, "rope_scaling": scaling}))
    ref_model.load_weights([(k, mx.array(v)) for k, v in stored.items()], strict=True)
    prompt = mx.array(PROMPT * 8)[None]  # positions past the original window's high-frequency range
    ref = np.array(ref_model(prompt)[0].astype(mx.float32))
    model, _, cfg = load_gguf(str(path), dequantize=True)
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    ours = np.array(model(prompt)[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
    plain, _, _ = load_gguf(str(build_tiny_gguf(tmp_path / "tiny-plain.gguf", "F32")[0]), dequantize=True)
    assert np.abs(np.array(plain(prompt)[0]) - ours).max() > 1e-3  # the factors matter


def test_phi3_longrope_factors(tmp_path):
    """Phi-3 128k GGUFs carry LongRoPE's long and short factors as tensors."""
    from mlx_lm.models import phi3

    from tests.fixtures.tiny_models import TINY_LLAMA_256

    half = TINY_LLAMA_256["head_dim"] // 2
    rng = np.random.default_rng(5)
    long, short = (1 + rng.random(half) * 4).tolist(), (1 + rng.random(half)).tolist()
    cfg = {**TINY_LLAMA_256, "tie_word_embeddings": False, "original_max_position_embeddings": 64,
           "max_position_embeddings": 1024}
    path, stored = build_tiny_gguf(tmp_path / "tiny-phi3-128k.gguf", "F32", cfg=cfg, arch="phi3", untied=True,
                                   extra={"rope_factors_long.weight": long, "rope_factors_short.weight": short})
    ref_cfg = {**cfg, "model_type": "phi3", "rope_scaling": {"type": "longrope", "long_factor": long,
                                                              "short_factor": short}}
    ref_model = phi3.Model(phi3.ModelArgs.from_dict(ref_cfg))
    ref_model.load_weights([(k, mx.array(v)) for k, v in stored.items()], strict=True)
    ref = np.array(ref_model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    model, _, got = load_gguf(str(path), dequantize=True)
    assert got["rope_scaling"]["type"] == "longrope" and got["original_max_position_embeddings"] == 64
    ours = np.array(model(mx.array(PROMPT)[None])[0].astype(mx.float32))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
