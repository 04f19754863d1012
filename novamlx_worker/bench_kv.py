"""KV-cache quantization side by side on one model, in one run:

    python -m novamlx_worker.bench_kv [--model M] [--context 8192] [--budget-mb 2048] [--streams 8]

For kv_bits 0 (the activation dtype), 8 and 4: how many sequences of --context tokens a fixed
KV budget admits (the engine's own pricing), perplexity on a fixed text (docs/architecture.md,
cut to --ppl-tokens) with the cache quantized as the engine keeps it, and the engine's decode
tok/s with --streams streams, as a ratio to unquantized. One JSON line per setting.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .platform import preload_openblas

TEXT = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def decode_rate(path: str, bits: int, group: int, streams: int, tokens: int) -> float:
    from protocol import messages as m

    from .engine.engine import Engine
    from .memory import MemoryEnforcer
    from .models.pool import ModelPool

    pool = ModelPool([path], [], "auto")
    model_id = next(iter(pool.entries))
    errors = []
    eng = Engine(pool, lambda msg: errors.append(msg.message) if isinstance(msg, m.Error) else None,
                 MemoryEnforcer("auto"), max_batch=max(streams, 1), prefix_cache_bytes=0, kv=(bits, group))
    vocab = eng.models.get(model_id).tokenizer.vocab_size

    def run(seed: int) -> float:
        for i in range(streams):
            eng.handle(m.Generate(f"s{seed}-{i}", model_id, m.Sampling(max_tokens=tokens, temperature=0, ignore_eos=True),
                                  prompt_tokens=[(seed * 7919 + i * 104729 + j * 31) % vocab for j in range(64)]))
        t = time.perf_counter()
        while eng.seqs:
            eng.step()
        return streams * tokens / (time.perf_counter() - t)

    run(1)  # warm
    rate = run(2)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return rate, eng.stats()["engine"]["batches"][model_id].get("kv_bits", 0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_kv")
    p.add_argument("--model", default=None, help="default: the embedded default model")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--budget-mb", type=float, default=2048)
    p.add_argument("--ppl-tokens", type=int, default=1024, help="0: no perplexity (MLX's CUDA quantized_matmul "
                   "lacks multi-token shapes)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--bits", default="0,8,4")
    args = p.parse_args(argv)
    preload_openblas()
    from protocol.naming import default_model_path

    from .engine.perplexity import perplexity
    from .models.pool import ModelPool, kv_bytes_per_token

    path = args.model or default_model_path()
    pool = ModelPool([path], [], "auto")
    lm = pool.get(next(iter(pool.entries)))
    ids = lm.tokenizer.encode(TEXT.read_text())[: args.ppl_tokens]
    budget = int(args.budget_mb * 1024**2)
    base_ppl = base_rate = None
    for bits in (int(b) for b in args.bits.split(",")):
        per_token = kv_bytes_per_token(lm, bits, args.group_size)
        ppl = perplexity(lm.model, ids, 128, bits, args.group_size) if ids else float("nan")  # --ppl-tokens 0: skip
        rate, ran = decode_rate(path, bits, args.group_size, args.streams, args.tokens)
        base_ppl, base_rate = base_ppl or ppl, base_rate or rate
        print(json.dumps({"kv_bits": bits or "plain", "group_size": args.group_size if bits else None,
                          "kv_bits_applied": ran,
                          "kv_bytes_per_token": per_token,
                          f"sequences_at_{args.context}_ctx_in_{args.budget_mb:.0f}MB": budget // (per_token * args.context),
                          "perplexity": round(ppl, 3), "ppl_vs_plain": round(ppl / base_ppl, 4),
                          "decode_tok_s": round(rate, 1), "speed_vs_plain": round(rate / base_rate, 3),
                          "streams": args.streams, "ppl_tokens": len(ids)}), flush=True)


if __name__ == "__main__":
    main()
