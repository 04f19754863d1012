"""Our engine in-process, no gateway, no pipe: where does a token's time go?

    python -m novamlx_worker.bench_engine --model M [--batches 1,32] [--tokens 128] [--profile]
    python -m novamlx_worker.bench_engine --model M --ngram K --ngram-vs-off [--always-miss]
    python -m novamlx_worker.bench_engine --model M --slots-vs-generator [--ngram K]

Runs the real Engine (admission, scheduler, runner, detokenizer, stop matching, Step
encoding) on forced-length requests and prints tok/s per batch size, next to mlx-lm's
stream_generate on the same loaded weights in the same process; --profile adds the top
functions by own time for the first batch size. One JSON line per measurement.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

from .platform import preload_openblas


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_engine")
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--bs1-runs", type=int, default=0,
                   help="then one stream N times, ours and stream_generate interleaved, decode tok/s medians")
    p.add_argument("--ngram", type=int, default=0, help="n-gram drafts of up to K tokens (engine's --speculative-ngram)")
    p.add_argument("--ngram-vs-off", action="store_true",
                   help="with --ngram: a second engine without drafts on the same weights, interleaved with the first "
                        "(--bs1-runs and every batch size), medians side by side")
    p.add_argument("--always-miss", action="store_true",
                   help="with --ngram-vs-off: every draft is K copies of the last vocabulary id, which the model "
                        "(almost) never picks: the cost of drafting when nothing is accepted")
    p.add_argument("--slots-vs-generator", action="store_true",
                   help="a sliding-window model: our slot batch against mlx-lm's BatchGenerator (its former path) "
                        "in a second engine on the same weights, alternating runs, medians side by side")
    args = p.parse_args(argv)
    preload_openblas()
    from mlx_lm.generate import stream_generate
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerFast

    from protocol import codec
    from protocol import messages as m

    from .bench_raw import prompts
    from .engine.engine import Engine
    from .memory import MemoryEnforcer
    from .models.pool import ModelPool

    pool = ModelPool([args.model], [], "auto")
    model_id = next(iter(pool.entries))
    lm = pool.get(model_id)
    sink = []
    def make_engine(ngram: int):
        return Engine(pool, lambda msg: sink.append(codec.encode(msg)), MemoryEnforcer("auto"), max_batch=256,
                      prefill_batch=32, prefix_cache_bytes=0, ngram_k=ngram)

    eng = make_engine(args.ngram)
    vocab = lm.tokenizer.vocab_size
    if args.always_miss:
        from .engine.ngram import History

        History.propose = lambda self, k: [vocab - 1] * k
    if args.ngram_vs_off:
        return side_by_side(args, {"on": eng, "off": make_engine(0)}, model_id, vocab, sink)
    if args.slots_vs_generator:
        from .engine.mlxlm_batch import MlxLmBatch

        generator = make_engine(args.ngram)
        generator.models.get(model_id)
        runner = generator.runners[model_id]
        runner.batch = MlxLmBatch(lm.model, 256, runner.prefill_step, 32, runner.snapshots)
        return side_by_side(args, {"slots": eng, "generator": generator}, model_id, vocab, sink)

    def run(batch: int, seed: int) -> float:
        for i, toks in enumerate(prompts(batch, args.prompt_len, vocab, seed)):
            eng.handle(m.Generate(f"b{batch}-{seed}-{i}", model_id, m.Sampling(
                max_tokens=args.tokens, temperature=0, ignore_eos=True), prompt_tokens=toks))
        t = time.perf_counter()
        while eng.seqs:
            eng.step()
            sink.clear()
        return batch * args.tokens / (time.perf_counter() - t)

    def decode_rate(seed: int) -> float:
        """One stream's decode tok/s: tokens after the first over the time from the first to the last."""
        eng.handle(m.Generate(f"one-{seed}", model_id, m.Sampling(max_tokens=args.tokens, temperature=0, ignore_eos=True),
                              prompt_tokens=prompts(1, args.prompt_len, vocab, seed)[0]))
        first = None
        while eng.seqs:
            eng.step()
            if first is None and sink:
                first = time.perf_counter()
            sink.clear()
        return (args.tokens - 1) / (time.perf_counter() - first)

    tok = TokenizerWrapper(PreTrainedTokenizerFast(tokenizer_object=lm.tokenizer.tok))
    tok._eos_token_ids = set()
    for seed in (1, 2):
        last = None
        for last in stream_generate(lm.model, tok, prompts(1, args.prompt_len, vocab, seed)[0], max_tokens=args.tokens):
            pass
    print(json.dumps({"what": "mlx-lm stream_generate", "batch": 1, "decode_tok_s": round(last.generation_tps, 1)}))
    for i, b in enumerate(int(x) for x in args.batches.split(",")):
        run(b, 1)  # warm this batch size's kernels
        prof = cProfile.Profile() if args.profile and i == 0 else None
        if prof:
            prof.enable()
        rate = run(b, 2)
        if prof:
            prof.disable()
        print(json.dumps({"what": "novamlx engine in-process (prefill included)", "batch": b,
                          "tok_s": round(rate, 1)}))
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            print(out.getvalue())
    if args.bs1_runs:
        import statistics

        ours, theirs = [], []
        for i in range(args.bs1_runs):
            ours.append(decode_rate(100 + i))
            for last in stream_generate(lm.model, tok, prompts(1, args.prompt_len, vocab, 100 + i)[0],
                                        max_tokens=args.tokens):
                pass
            theirs.append(last.generation_tps)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(json.dumps({"what": "one stream, decode tok/s, median of interleaved runs", "runs": args.bs1_runs,
                          "tokens": args.tokens, "ngram": args.ngram, "novamlx": round(a, 1),
                          "stream_generate": round(b, 1), "ratio": round(a / b, 3),
                          "novamlx_runs": [round(x, 1) for x in ours], "stream_generate_runs": [round(x, 1) for x in theirs]}))


def side_by_side(args, engines: dict, model_id: str, vocab: int, sink: list) -> None:
    """Two engines in one process on the same weights (drafts on and off; the slot batch and
    BatchGenerator), runs alternating, without process-to-process spread: the first's rate over
    the second's."""
    import statistics

    from protocol import messages as m

    from .bench_raw import prompts

    def run(eng, batch: int, seed: int, decode_only: bool) -> float:
        for i, toks in enumerate(prompts(batch, args.prompt_len, vocab, seed)):
            eng.handle(m.Generate(f"v{batch}-{seed}-{i}-{id(eng)}", model_id, m.Sampling(
                max_tokens=args.tokens, temperature=0, ignore_eos=True), prompt_tokens=toks))
        t = first = time.perf_counter()
        got = 0
        while eng.seqs:
            eng.step()
            if decode_only and not got and sink:
                first, got = time.perf_counter(), 1
            sink.clear()
        end = time.perf_counter()
        return (batch * args.tokens - got) / (end - (first if decode_only else t))

    runs = max(args.bs1_runs, 3)
    (first, one), (second, two) = engines.items()
    for b in [int(x) for x in args.batches.split(",")]:
        for eng in (one, two):
            run(eng, b, 1, b == 1)  # warm this batch size's kernels
        rates = {first: [], second: []}
        for i in range(runs):
            pair = list(engines.items()) if i % 2 == 0 else list(engines.items())[::-1]
            for name, eng in pair:
                rates[name].append(run(eng, b, 100 + i, b == 1))
        a, o = statistics.median(rates[first]), statistics.median(rates[second])
        drafts = one.stats()["engine"]["batches"][model_id].get("ngram")
        print(json.dumps({"what": f"{first} vs {second}, same weights, alternating runs", "batch": b,
                          "tokens": args.tokens, "ngram": args.ngram, first: round(a, 1), second: round(o, 1),
                          "ratio": round(a / o, 3),
                          "paired_ratio_median": round(statistics.median(x / y for x, y in zip(rates[first], rates[second])), 3),
                          f"{first}_runs": [round(x, 1) for x in rates[first]],
                          f"{second}_runs": [round(x, 1) for x in rates[second]], "drafts": drafts}))


if __name__ == "__main__":
    main()
