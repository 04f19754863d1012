"""Time one decode step at batch sizes B, three ways, on the same weights:

    python -m novamlx_worker.bench_step --model M [--batches 1,32,128] [--context 256]

plain: the model with a plain KVCache holding B equal-length rows (no padding, no mask);
batch: mlx-lm's BatchGenerator in steady state (B prompts prefilled, then timed `next()` calls);
each figure is milliseconds per step, after warm-up. Tells whether batched decode is bound by
the kernels (plain is slow too) or by the batching machinery around them.
"""
from __future__ import annotations

import argparse
import json
import time

from .platform import preload_openblas


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_step")
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    preload_openblas()
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models.cache import make_prompt_cache

    from .bench_raw import prompts
    from .models.loader import load

    lm = load(args.model)
    model, vocab = lm.model, lm.tokenizer.vocab_size
    for b in (int(x) for x in args.batches.split(",")):
        cache = make_prompt_cache(model)
        x = mx.array(prompts(b, args.context, vocab, seed=b))
        mx.eval(model(x, cache=cache))
        y = mx.zeros((b, 1), dtype=mx.int32)
        times = []
        for i in range(args.steps + 5):  # pipelined like generate_step: queue the next, then read this one
            t = time.perf_counter()
            logits = model(y, cache=cache)[:, -1, :]
            y = mx.argmax(logits, axis=-1)[:, None]
            mx.eval(y)
            if i >= 5:
                times.append(time.perf_counter() - t)
        plain = sum(times) / len(times) * 1000
        gen = BatchGenerator(model, stop_tokens=None, prefill_batch_size=b, completion_batch_size=b)
        gen.insert(prompts(b, args.context, vocab, seed=b + 1), [args.steps + 50] * b)
        while not gen.next_generated():  # prefill until the first tokens
            pass
        for _ in range(5):
            gen.next_generated()
        t = time.perf_counter()
        for _ in range(args.steps):
            gen.next_generated()
        batch = (time.perf_counter() - t) / args.steps * 1000
        print(json.dumps({"batch": b, "plain_ms_per_step": round(plain, 2), "batchgen_ms_per_step": round(batch, 2),
                          "plain_tok_s": round(b * 1000 / plain), "batchgen_tok_s": round(b * 1000 / batch)}))


if __name__ == "__main__":
    main()
