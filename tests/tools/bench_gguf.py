"""A K-quant GGUF against the same model as an MLX 4-bit folder: load time and decode tok/s.

    python -m tests.tools.bench_gguf [--layers 24] [--hidden 512] [--tokens 64]   (it uses the test fixtures)

Writes a random-weight llama (SmolLM2's vocabulary and tokenizer metadata) as a Q4_K_M GGUF
(Q6_K for attn_v/ffn_down, Q4_K elsewhere: llama.cpp's mix, random blocks of those types),
converts it to an MLX folder with every layer at 4 bits (`novamlx convert --bits 4`), then
loads each (kept quantized; and the GGUF dense, as a CPU loads it by default) and decodes with
mlx-lm's stream_generate on the same prompt. One JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from novamlx_worker.platform import preload_openblas


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_gguf")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args(argv)
    preload_openblas()
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from mlx_lm.utils import load as mlx_lm_load
    from transformers import PreTrainedTokenizerFast

    from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_gguf

    from novamlx_worker.models.export import convert
    from novamlx_worker.models.gguf import load_gguf

    cfg = {**TINY_LLAMA, "hidden_size": args.hidden, "intermediate_size": 3 * args.hidden, "num_hidden_layers": args.layers,
           "num_attention_heads": args.hidden // 64, "num_key_value_heads": max(1, args.hidden // 256), "head_dim": 64,
           "max_position_embeddings": 4096}
    root = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    gguf_path, _ = build_tiny_gguf(root / "model-q4km.gguf", "Q4_K_M", cfg=cfg)
    folder = convert(str(gguf_path), root / "model-mlx-4bit", bits=4, log=lambda *_: None)
    size = lambda path: sum(f.stat().st_size for f in ([Path(path)] if Path(path).is_file() else Path(path).rglob("*"))  # noqa: E731
                            if f.is_file())
    prompt = list(range(1000, 1064))

    def decode(model, tok) -> float:
        last = None
        for last in stream_generate(model, tok, prompt, max_tokens=args.tokens):
            pass
        return last.generation_tps

    runs = []
    for what, load in (("gguf Q4_K_M kept quantized (4/8-bit MLX)", lambda: load_gguf(str(gguf_path))[:2]),
                       ("gguf Q4_K_M dense fp32 (the CPU default)", lambda: load_gguf(str(gguf_path), True, mx.float32)[:2]),
                       ("mlx folder, 4-bit", lambda: mlx_lm_load(str(folder)))):
        t = time.perf_counter()
        model, tok = load()
        mx.eval(model.parameters())
        loaded = time.perf_counter() - t
        if not isinstance(tok, TokenizerWrapper):
            tok = TokenizerWrapper(PreTrainedTokenizerFast(tokenizer_object=tok.tok))
        tok._eos_token_ids = set()
        decode(model, tok)  # warm
        rate = decode(model, tok)
        runs.append({"what": what, "load_s": round(loaded, 2), "decode_tok_s": round(rate, 1)})
        print(json.dumps(runs[-1]))
    print(json.dumps({"params": "layers %d hidden %d vocab 49152" % (args.layers, args.hidden),
                      "gguf_mb": round(size(gguf_path) / 1e6, 1), "mlx_4bit_mb": round(size(folder) / 1e6, 1),
                      "decode_ratio_gguf_kept_vs_mlx4": round(runs[0]["decode_tok_s"] / runs[2]["decode_tok_s"], 3)}))


if __name__ == "__main__":
    main()
