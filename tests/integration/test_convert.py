"""`novamlx convert`: a K-quant GGUF (Q4_K_M: 4- and 8-bit layers) and a Hugging Face folder
become MLX folders that mlx-lm loads and the server serves with the source's greedy output."""
import subprocess
import sys

import mlx.core as mx
import numpy as np
from mlx_lm.utils import load as mlx_lm_load

from novamlx_worker.models.gguf import load_gguf
from tests.conftest import ROOT, Server
from tests.fixtures.tiny_models import TINY_LLAMA_256, build_tiny_gguf

PROMPT = [1, 400, 2300, 15, 9000, 77]
NOVAMLX = [sys.executable, "-c", "import sys; from novamlx_gateway.cli import novamlx_main; novamlx_main(sys.argv[1:])"]


def convert(*args) -> str:
    r = subprocess.run([*NOVAMLX, "convert", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def greedy(s, model):
    r = s.openai().chat.completions.create(model=model, messages=[{"role": "user", "content": "hello there"}],
                                           max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    return r.choices[0].message.content


def test_gguf_and_hf_folder_convert_round_trip(tmp_path, tiny_model):
    gguf_path, _ = build_tiny_gguf(tmp_path / "tiny-km.gguf", "Q4_K_M", cfg=TINY_LLAMA_256)
    out = convert(gguf_path, tmp_path / "tiny-km-mlx")
    assert "writing" in out and "done" in out
    # mlx-lm itself loads the folder (per-layer widths in its config) with the GGUF's exact weights
    theirs, _ = mlx_lm_load(str(tmp_path / "tiny-km-mlx"))
    ours, _, _ = load_gguf(str(gguf_path))
    a = np.array(theirs(mx.array(PROMPT)[None]).astype(mx.float32))
    b = np.array(ours(mx.array(PROMPT)[None]).astype(mx.float32))
    np.testing.assert_array_equal(a, b)
    convert(tiny_model, tmp_path / "tiny-llama-f32", "--dtype", "float32")  # a Hugging Face folder
    bad = subprocess.run([*NOVAMLX, "convert", tmp_path / "none.gguf",
                          tmp_path / "x"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "novamlx convert:" in bad.stderr and "Traceback" not in bad.stderr

    s = Server(["--model", str(gguf_path), "--model", str(tmp_path / "tiny-km-mlx"), "--model", str(tiny_model),
                "--model", str(tmp_path / "tiny-llama-f32"), "--dequantize", "off", "--embedding-model", "none"],
               tmp_path / "data").wait_ready()
    try:
        assert greedy(s, "tiny-km-mlx") == greedy(s, "tiny-km")
        assert greedy(s, "tiny-llama-f32") == greedy(s, "tiny-llama")
    finally:
        s.stop()
