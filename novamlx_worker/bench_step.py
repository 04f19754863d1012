"""Time one decode step at batch sizes B, several ways, on the same weights:

    python -m novamlx_worker.bench_step --model M [--batches 1,32,128] [--context 256]

plain: the model with a plain KVCache holding B equal-length rows, evaluated step by step;
plain_pipe: the same with the next step queued (`mx.async_eval`) before this one is read;
plain_mask: plain_pipe with an (all-true) array mask, as rows of different lengths need;
ours: engine/batch.py's Batch (fixed KV slots, ragged attention on CUDA), rows of
different lengths; batchgen: mlx-lm's BatchGenerator on the same rows. Steady state: the
figure is milliseconds per step after warm-up. Tells whether batched decode is bound by the
kernels or by the host work around them.
"""
from __future__ import annotations

import argparse
import json
import time

from .platform import preload_openblas


def _timed(fn, steps: int, warm: int = 5) -> float:
    for _ in range(warm):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1000


def check_ragged() -> None:
    """The ragged kernel against MLX's masked attention on random rows of different lengths."""
    import mlx.core as mx

    from .engine import ragged

    mx.random.seed(0)
    for dtype in (mx.float32, mx.bfloat16):
        for d in (64, 128):
            B, H, Hkv, L = 5, 8, 2, 300
            q = mx.random.normal((B, 1, H, d)).astype(dtype).transpose(0, 2, 1, 3)
            k = mx.random.normal((B, Hkv, L, d)).astype(dtype)
            v = mx.random.normal((B, Hkv, L, d)).astype(dtype)
            lens = mx.array([1, 3, 17, 150, 300])
            mask = (mx.arange(L)[None] < lens[:, None])[:, None, None, :]
            ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=d ** -0.5, mask=mask)
            for unroll in (1, 2, 4):
                got = ragged.attention(q, k, v, d ** -0.5, lens, unroll)
                err = mx.abs(ref.astype(mx.float32) - got.astype(mx.float32)).max().item()
                print(json.dumps({"check": "ragged", "dtype": str(dtype), "D": d, "unroll": unroll,
                                  "max_abs_err": err}), flush=True)
    # 32 layers' decode attention at 128 rows of 300 tokens, 8B shape: ragged per unroll vs MLX's fused
    S, Hq, H, C, D = 128, 32, 8, 512, 128
    q = mx.random.normal((S, 1, Hq, D)).astype(mx.bfloat16).transpose(0, 2, 1, 3)
    ks = [mx.random.normal((S, H, C, D)).astype(mx.bfloat16) for _ in range(4)]
    vs = [mx.random.normal((S, H, C, D)).astype(mx.bfloat16) for _ in range(4)]
    lens = mx.full((S,), 300, mx.int32)
    times = {}
    for unroll in (1, 2, 4):
        times[f"ragged_u{unroll}_ms"] = _timed(
            lambda: mx.eval([ragged.attention(q, ks[i % 4], vs[i % 4], 0.088, lens, unroll) for i in range(32)]), 20)
    times["fused_ms"] = _timed(lambda: mx.eval([mx.fast.scaled_dot_product_attention(
        q, ks[i % 4][:, :, :300], vs[i % 4][:, :, :300], scale=0.088) for i in range(32)]), 20)
    print(json.dumps({k: round(v, 2) for k, v in times.items()}), flush=True)


def check_batch(model) -> None:
    """Rows of different lengths (crossing the first 256-column capacity) decoded together by
    engine/batch.py give the tokens each gives alone; prints whether the CUDA kernel was used."""
    import random

    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from .engine.batch import Batch, Row

    rng = random.Random(0)
    prompts = [[rng.randrange(100, 30000) for _ in range(n)] for n in (5, 40, 300, 17, 90)]

    def alone(p, n):
        cache, out = make_prompt_cache(model), []
        logits = model(mx.array(p)[None], cache=cache)[:, -1]
        for _ in range(n):
            out.append(int(mx.argmax(logits, -1).item()))
            logits = model(mx.array([[out[-1]]]), cache=cache)[:, -1]
        return out

    refs = [alone(p, 12) for p in prompts]
    batch = Batch(model, max_batch=8, prefill_step=64, prefill_batch=2)
    for i, p in enumerate(prompts):
        batch.add(Row(i, None, [], set(), 12, known=len(p)), p, None)
    got: dict[int, list[int]] = {}
    while batch.active:
        for o in batch.step():
            got.setdefault(o.rid, []).append(o.token)
            if o.finish_reason:
                batch.finished(o.rid)
    print(json.dumps({"check": "batch", "ragged_kernel": batch.use_kernel,
                      "equal_to_alone": [got[i] == refs[i] for i in range(len(prompts))]}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_step")
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--only", default="plain,plain_pipe,plain_mask,ours,batchgen")
    p.add_argument("--check", action="store_true", help="first compare the ragged kernel with masked attention")
    p.add_argument("--check-batch", action="store_true",
                   help="only check: greedy rows decoded together == each alone, on --model (use fp32 weights)")
    args = p.parse_args(argv)
    preload_openblas()
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models.cache import make_prompt_cache

    from .bench_raw import prompts
    from .engine.batch import Batch, Row
    from .models.loader import load

    if args.check:
        check_ragged()
    lm = load(args.model)
    if args.check_batch:
        return check_batch(lm.model)
    model, vocab = lm.model, lm.tokenizer.vocab_size
    ways = args.only.split(",")
    for b in (int(x) for x in args.batches.split(",")):
        row = {"batch": b}
        x = mx.array(prompts(b, args.context, vocab, seed=b))
        if {"plain", "plain_pipe", "plain_mask"} & set(ways):
            cache = make_prompt_cache(model)
            mx.eval(model(x, cache=cache))
            st = {"y": mx.zeros((b, 1), dtype=mx.int32)}

            def plain():
                st["y"] = mx.argmax(model(st["y"], cache=cache)[:, -1, :], axis=-1)[:, None]
                mx.eval(st["y"])

            def plain_pipe():
                nxt = mx.argmax(model(st["y"], cache=cache)[:, -1, :], axis=-1)[:, None]
                mx.async_eval(nxt)
                st["y"].tolist()
                st["y"] = nxt

            def plain_mask():  # the same with an (all-true) array mask, as batched rows need
                mask = mx.ones((b, 1, 1, cache[0].offset + 1), dtype=mx.bool_)
                for c in cache:
                    c.make_mask = lambda *a, **k: mask
                plain_pipe()

            for way, fn in (("plain", plain), ("plain_pipe", plain_pipe), ("plain_mask", plain_mask)):
                if way in ways:
                    row[way] = round(_timed(fn, args.steps), 2)
            del cache
        rows = [p[: args.context - (i * 7) % 64] for i, p in enumerate(prompts(b, args.context, vocab, seed=b + 1))]
        if "ours" in ways:
            batch = Batch(model, max_batch=b, prefill_step=2048, prefill_batch=b)
            for i, r in enumerate(rows):
                batch.add(Row(i, None, [], set(), args.steps + 50, known=len(r)), r, None)
            while not batch.step():  # prefill until the first tokens
                pass
            row["ours"] = round(_timed(batch.step, args.steps), 2)
            del batch
        if "batchgen" in ways:
            gen = BatchGenerator(model, stop_tokens=None, prefill_batch_size=b, completion_batch_size=b)
            gen.insert(rows, [args.steps + 50] * b)
            while not gen.next_generated():
                pass
            row["batchgen"] = round(_timed(gen.next_generated, args.steps), 2)
            del gen
        row.update({f"{k}_tok_s": round(b * 1000 / v) for k, v in list(row.items()) if k != "batch"})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
