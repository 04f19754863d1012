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
