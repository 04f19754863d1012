"""Raw mlx-lm baselines for `novamlx bench`, on the same weights our server loads.

    python -m novamlx_worker.bench_raw stream --model M --prompt-len 128 --tokens 128
    python -m novamlx_worker.bench_raw batch --model M --batch 32 --prompt-len 128 --tokens 128 \
        [--prefill-batch 8] [--completion-batch 32]

Prints one JSON line. `stream` times mlx-lm's `stream_generate` (its reported decode
tok/s); `batch` drives mlx-lm's BatchGenerator (what `batch_generate` runs) with output
length forced (no stop tokens), timing generated tokens over the whole run, prefill included.
"""
from __future__ import annotations

import argparse
import json
import sys
import os
import random
import time

from .platform import preload_openblas


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, min(vocab, 30000)) for _ in range(length)] for _ in range(n)]


SHAPES = {
    # Llama-3-8B's shape with SmolLM2's 49K vocabulary (the tokenizer the benchmarks carry).
    "llama-8b": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                 "vocab_size": 49152, "max_position_embeddings": 16384, "tie_word_embeddings": False},
    # Gemma 3 4B's shape: sliding-window layers (1024) with a global one every sixth.
    "gemma3-4b": {"model_type": "gemma3_text", "hidden_size": 2560, "num_hidden_layers": 34, "intermediate_size": 10240,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
                  "sliding_window": 1024, "sliding_window_pattern": 6, "rms_norm_eps": 1e-6, "vocab_size": 49152,
                  "max_position_embeddings": 32768},
    # LFM2-1.2B's shape: a hybrid of short-convolution (state) layers and six attention layers.
    "lfm2-1.2b": {"model_type": "lfm2", "vocab_size": 49152, "hidden_size": 2048, "num_hidden_layers": 16,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
                  "norm_eps": 1e-5, "conv_bias": False, "conv_L_cache": 3, "block_dim": 2048, "block_ff_dim": 12288,
                  "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
                  "full_attn_idxs": [2, 5, 8, 10, 12, 14]},
    # Small stand-ins with the same code paths, for trying the benchmarks on a CPU.
    "gemma3-tiny": {"model_type": "gemma3_text", "hidden_size": 256, "num_hidden_layers": 6, "intermediate_size": 512,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "query_pre_attn_scalar": 64,
                    "sliding_window": 128, "sliding_window_pattern": 6, "rms_norm_eps": 1e-6, "vocab_size": 49152,
                    "max_position_embeddings": 32768},
    "llama-tiny": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 512,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "vocab_size": 49152, "max_position_embeddings": 16384, "tie_word_embeddings": False},
}


def make_model(shape: str, out: str, tokenizer_from: str, dtype: str = "bfloat16") -> None:
    """A random-weight model folder of a given shape, for speed runs (same shapes, same speed)."""
    import os
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    cfg = SHAPES[shape]
    os.makedirs(out, exist_ok=True)
    model_class, args_class = _get_classes(cfg)
    model = model_class(args_class.from_dict(cfg))
    model.set_dtype(getattr(mx, dtype))
    params = dict(tree_flatten(model.parameters()))
    shard, size, n = {}, 0, 0
    for name, w in params.items():
        if w.ndim == 2:
            w = (mx.random.normal(w.shape) * 0.02).astype(w.dtype)
        shard[name] = w
        size += w.nbytes
        if size > 4 * 1024**3:
            mx.save_safetensors(os.path.join(out, f"model-{n:05d}.safetensors"), shard, metadata={"format": "mlx"})
            shard, size, n = {}, 0, n + 1
    if shard:
        mx.save_safetensors(os.path.join(out, f"model-{n:05d}.safetensors"), shard, metadata={"format": "mlx"})
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_from, f), os.path.join(out, f))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_raw")
    p.add_argument("mode", choices=["stream", "batch", "make-model"])
    p.add_argument("--shape", default="llama-8b")
    p.add_argument("--out", default=None)
    p.add_argument("--tokenizer-from", default=None)
    p.add_argument("--dtype", default="bfloat16", help="make-model: weight dtype")
    p.add_argument("--model", default=None)
    p.add_argument("--dequantize", default="auto")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prefill-batch", type=int, default=8)
    p.add_argument("--completion-batch", type=int, default=32)
    p.add_argument("--no-openblas", action="store_true")
    p.add_argument("--distributed-backend", default="", help="run under mlx.launch: shard the model over the ranks")
    args = p.parse_args(argv)
    if not args.no_openblas:
        preload_openblas()
    if args.mode == "make-model":
        make_model(args.shape, args.out, args.tokenizer_from, args.dtype)
        print(json.dumps({"mode": "make-model", "out": args.out}))
        return
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator, stream_generate
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

    from .models.loader import load

    group = mx.distributed.init(strict=True, backend=args.distributed_backend) if args.distributed_backend else None
    lm = load(args.model, args.dequantize, group=group)
    vocab = lm.tokenizer.vocab_size
    if group is not None and group.rank() != 0:  # the other ranks run the same loop; rank 0 reports
        sys.stdout = open(os.devnull, "w")
    if args.mode == "stream":
        tok = TokenizerWrapper(PreTrainedTokenizerFast(tokenizer_object=lm.tokenizer.tok))
        tok._eos_token_ids = set()  # force the output length
        results = []
        for prompt in prompts(2, args.prompt_len, vocab):  # the first pass warms kernels up
            last = None
            for last in stream_generate(lm.model, tok, prompt, max_tokens=args.tokens):
                pass
            results.append(last)
        r = results[-1]
        print(json.dumps({"mode": "stream", "tok_s": r.generation_tps, "prefill_tok_s": r.prompt_tps,
                          "tokens": r.generation_tokens, "peak_gb": r.peak_memory}))
        return

    def run(batch_prompts):
        gen = BatchGenerator(lm.model, stop_tokens=None, prefill_batch_size=args.prefill_batch,
                             completion_batch_size=max(args.completion_batch, args.batch))
        gen.insert(batch_prompts, [args.tokens] * len(batch_prompts))
        t, n, done = time.perf_counter(), 0, 0
        while done < len(batch_prompts):
            for r in gen.next_generated():
                n += 1
                done += r.finish_reason is not None
        mx.synchronize()
        return n, time.perf_counter() - t

    run(prompts(args.batch, args.prompt_len, vocab, seed=1))  # warm every shape first
    n, dt = run(prompts(args.batch, args.prompt_len, vocab, seed=2))
    print(json.dumps({"mode": "batch", "batch": args.batch, "tok_s": n / dt, "tokens": n, "seconds": dt,
                      "prefill_batch": args.prefill_batch, "completion_batch": args.completion_batch}))


if __name__ == "__main__":
    main()
