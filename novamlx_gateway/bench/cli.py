"""`novamlx bench ...`

  novamlx bench load --base-url URL --model M [--concurrency 1,8,32] [--rate R] [--input-len 128] [--output-len 128]
  novamlx bench agent --base-url URL --model M [--turns 20]
  novamlx bench prefix --base-url URL --model M [--prefix-len 8192]
  novamlx bench compare [--model PATH] [--peer-model MLX_DIR] [--concurrency 1,8,32] [--raw]

`compare` starts NovaMLX, mlx_lm.server (and mlx_vlm.server when installed) on the same
weights, warms each, runs the same load against each in turn and prints ratios; with --raw
it adds mlx-lm's stream_generate (batch 1) and BatchGenerator (batch = concurrency).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile

from . import servers
from .load import agent_replay, embed_bench, mask_bench, prefix_ttft, run_load


def _levels(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _last_error_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if "Error" in ln or "error" in ln]
    return (lines[-1] if lines else log.splitlines()[0])[:200]


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {platform.system()} py{platform.python_version()}"


async def _sweep(base_url, model, levels, args, warm=True, stagger=0.0) -> dict[int, dict]:
    out = {}
    for c in levels:
        n = max(c * args.rounds, c)
        if warm:  # MLX compiles kernels per shape: warm this batch size first
            await run_load(base_url, model, concurrency=c, requests=c, input_len=args.input_len,
                           output_len=args.output_len, api_key=args.api_key, seed=99, stagger_s=stagger,
                           temperature=args.temperature)
        out[c] = await run_load(base_url, model, concurrency=c, requests=n, input_len=args.input_len,
                                output_len=args.output_len, api_key=args.api_key, stagger_s=stagger,
                                temperature=args.temperature)
        print(json.dumps({"concurrency": c, **{k: round(v, 2) if isinstance(v, float) else v
                                                for k, v in out[c].items()}}), file=sys.stderr)
    return out


def compare(args) -> None:
    levels = _levels(args.concurrency)
    rows: dict[str, dict[int, float]] = {}
    decode: dict[str, float] = {}  # one stream's decode rate, 1000 / TPOT p50
    extra: list[str] = []
    peer_dir = args.peer_model
    if peer_dir is None:
        peer_dir = args.model if args.model and not args.model.endswith(".gguf") else None
    if peer_dir is None:  # the embedded GGUF: export it as an MLX folder the peers can read
        from subprocess import run

        peer_dir = tempfile.mkdtemp(prefix="bench-peer-")
        cmd = [sys.executable, "-m", "novamlx_worker.models.export"] + ([args.model] if args.model else []) + [peer_dir]
        run(cmd, check=True, capture_output=True)
    # Throughput runs with the prefix cache off, so no server is helped by repeated prompts;
    # the cache is measured on its own (cached-prefix TTFT, agent replay) with a fresh server.
    ours = ["--max-batch", str(args.max_batch), "--prefill-batch", str(args.raw_prefill_batch),
            "--max-concurrent-requests", "1024", "--max-queue", "4096"]
    targets = [("novamlx", lambda: servers.start_novamlx(args.model, ours + ["--prefix-cache-mb", "0"]))]
    if args.sharded:  # backend:ranks, e.g. nccl:2 -- the same server with the model split over ranks
        backend, _, ranks = args.sharded.partition(":")
        targets.append(("novamlx-sharded", lambda: servers.start_novamlx(args.model, ours + [
            "--prefix-cache-mb", "0", "--distributed-backend", backend, "--distributed-ranks", ranks or "2"])))
    if args.prefix_len or args.agent:
        targets.append(("novamlx (prefix cache)", lambda: servers.start_novamlx(args.model, ours)))
    if not args.skip_peers:
        top = str(max(levels))
        targets.append(("mlx_lm.server", lambda: servers.start_mlx_lm(
            peer_dir, ["--decode-concurrency", top, "--prompt-concurrency", str(min(int(top), 32))])))
        targets.append(("mlx_vlm.server", lambda: servers.start_mlx_vlm(peer_dir, ["--max-num-seqs", top])))
    only = set(args.only.split(",")) if args.only else None
    for name, start in targets:
        if only is not None and name.split(" ")[0] not in only:
            continue
        try:
            launched = start()
        except RuntimeError as e:  # a peer that cannot serve this model is a row of the report, not the end of the run
            print(f"{name} did not start: {str(e).splitlines()[0]}", file=sys.stderr)
            extra.append(f"{name}: did not start ({_last_error_line(str(e))})")
            continue
        if launched is None:
            continue
        try:
            if name != "novamlx (prefix cache)":
                res = asyncio.run(_sweep(launched.base_url, launched.model, levels, args, warm=not args.no_warm,
                                         stagger=0.02 if name != "novamlx" else 0.0))
                rows[name] = {c: r["output_tok_s"] for c, r in res.items()}
                if 1 in res and res[1]["tpot_p50_ms"] > 0:
                    decode[name] = 1000.0 / res[1]["tpot_p50_ms"]
            if name == "novamlx (prefix cache)" and args.prefix_len:
                pt = asyncio.run(prefix_ttft(launched.base_url, launched.model, prefix_len=args.prefix_len))
                extra.append(f"cached {args.prefix_len}-token prefix: TTFT cold {pt['cold_ttft_ms']:.0f} ms, warm "
                             f"{pt['warm_ttft_ms']:.0f} ms ({pt['speedup']:.1f}x), cached tokens {pt['warm_cached_tokens']}")
            if name == "novamlx (prefix cache)" and args.agent:
                turns = asyncio.run(agent_replay(launched.base_url, launched.model, turns=args.turns,
                                                 turn_len=args.turn_len, output_len=32))
                hit = sum(1 for t in turns[1:] if t["cached_tokens"] >= t["prompt_tokens"] - 2 * 64 - args.turn_len * 2)
                extra.append(f"agent replay, {args.turns} turns: turns 2..{args.turns} reusing the previous prompt "
                             f"from cache: {hit}/{args.turns - 1}; TTFT ms by turn: "
                             + ", ".join(f"{t['ttft_ms']:.0f}" for t in turns)
                             + "; cached tokens by turn: " + ", ".join(str(t["cached_tokens"]) for t in turns))
        finally:
            launched.stop()
    if args.raw:
        raw = servers.raw_baseline("stream", args.model, prompt_len=args.input_len, tokens=args.output_len)
        rows["raw stream_generate (bs1)"] = {1: raw["tok_s"]}
        decode["raw stream_generate (bs1)"] = raw["tok_s"]
        for c in levels:
            if c > 1:
                r = servers.raw_baseline("batch", args.model, batch=c, prompt_len=args.input_len,
                                         tokens=args.output_len, prefill_batch=args.raw_prefill_batch,
                                         completion_batch=c)
                rows.setdefault("raw BatchGenerator", {})[c] = r["tok_s"]
    print(f"\nmachine: {_machine()}; input {args.input_len} tokens, output {args.output_len} tokens, "
          f"{args.rounds} request(s) per client\n")
    print("| server | " + " | ".join(f"{c} streams tok/s" for c in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name, vals in rows.items():
        print(f"| {name} | " + " | ".join(f"{vals[c]:.1f}" if c in vals else "-" for c in levels) + " |")
    if decode:
        print("\n| one stream, decode tok/s (1000 / TPOT p50; stream_generate: its own figure) | |\n|---|---|")
        for name, v in decode.items():
            print(f"| {name} | {v:.1f} |")
    ours = rows.get("novamlx", {})
    print()
    if "novamlx" in decode:
        for name, v in decode.items():
            if name != "novamlx":
                print(f"one-stream decode, novamlx / {name}: {decode['novamlx'] / v:.2f}x")
    for name, vals in rows.items():
        if name == "novamlx":
            continue
        ratios = [f"{c}: {ours[c] / vals[c]:.2f}x" for c in levels if c in vals and c in ours and vals[c] > 0]
        if ratios:
            print(f"novamlx / {name}: " + ", ".join(ratios))
    for line in extra:
        print(line)


def probe(args) -> None:
    """Our server under load, with the engine's own counters per level: decode steps, the
    largest batch, and the engine thread's time inside the runners vs whole steps."""
    import httpx

    launched = servers.start_novamlx(args.model, ["--max-batch", str(args.max_batch), "--prefill-batch",
                                                  str(args.raw_prefill_batch), "--max-concurrent-requests", "1024",
                                                  "--max-queue", "4096", "--prefix-cache-mb", "0",
                                                  "--health-interval", "0.2"])
    keys = ("steps", "tokens_total", "runner_s", "runner_calls", "step_s")

    def engine_now() -> dict:
        import time

        time.sleep(0.5)
        h = httpx.get(launched.base_url + "/health").json()["health"]  # defaults are left out of the push
        return {"steps": h.get("steps", 0), "tokens_total": h.get("tokens_total", 0), "peak_batch": h.get("peak_batch", 0),
                **{k: h.get("engine", {}).get(k, 0) for k in ("runner_s", "runner_calls", "step_s")}}

    try:
        for c in _levels(args.concurrency):
            for rep in range(2):  # the first pass warms this batch size
                before = engine_now()
                r = asyncio.run(run_load(launched.base_url, launched.model, concurrency=c, requests=c,
                                         input_len=args.input_len, output_len=args.output_len))
                after = engine_now()
                if rep:
                    d = {k: round(after[k] - before[k], 3) for k in keys}
                    print(json.dumps({"concurrency": c, "tok_s": round(r["output_tok_s"], 1),
                                      "wall_s": round(r["wall_s"], 3), "ttft_p50_ms": round(r["ttft_p50_ms"], 1),
                                      "tpot_p50_ms": round(r["tpot_p50_ms"], 2), "engine": d,
                                      "peak_batch": after["peak_batch"]}))
    finally:
        launched.stop()


async def shard_check(args) -> bool:
    """Greedy answers of the model alone and sharded (--sharded BACKEND:RANKS) must be equal."""
    import httpx

    prompts = ["Tell me about the sea.", "List three colours.", "What is 2+2?", "Write a haiku about rain."]
    backend, _, ranks = (args.sharded or "ring:2").partition(":")
    answers = []
    for extra in ([], ["--distributed-backend", backend, "--distributed-ranks", ranks or "2"]):
        launched = servers.start_novamlx(args.model, extra)
        try:
            async with httpx.AsyncClient(timeout=600) as c:
                got = []
                for p in prompts:
                    r = await c.post(launched.base_url + "/v1/chat/completions", json={
                        "model": launched.model or "default", "messages": [{"role": "user", "content": p}],
                        "temperature": 0, "max_tokens": args.output_len, "ignore_eos": True})
                    got.append(r.json()["choices"][0]["message"]["content"])
                answers.append(got)
        finally:
            launched.stop()
    same = answers[0] == answers[1]
    print(json.dumps({"backend": backend, "ranks": ranks or "2", "equal": same, "single": answers[0],
                      "sharded": answers[1]}, indent=1))
    return same


def main(argv=None) -> None:
    if argv and argv[0] == "kv":  # in-process on the worker side: KV quantization capacity, perplexity, speed
        import subprocess
        import sys

        raise SystemExit(subprocess.call([sys.executable, "-m", "novamlx_worker.bench_kv", *argv[1:]]))
    p = argparse.ArgumentParser(prog="novamlx bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("load", "agent", "prefix", "compare", "embed", "mask", "shardcheck", "probe"):
        sp = sub.add_parser(name)
        sp.add_argument("--base-url", default="http://127.0.0.1:6590")
        sp.add_argument("--model", default=None)
        sp.add_argument("--api-key", default=None)
        sp.add_argument("--concurrency", default="1,8,32")
        sp.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
        sp.add_argument("--rounds", type=int, default=1, help="requests per client")
        sp.add_argument("--input-len", type=int, default=128)
        sp.add_argument("--output-len", type=int, default=128)
        sp.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above: sampled traffic")
        sp.add_argument("--turns", type=int, default=20)
        sp.add_argument("--turn-len", type=int, default=200)
        sp.add_argument("--prefix-len", type=int, default=0 if name == "compare" else 8192)
        sp.add_argument("--peer-model", default=None, help="MLX folder for the peers (default: exported --model)")
        sp.add_argument("--max-batch", type=int, default=128)
        sp.add_argument("--skip-peers", action="store_true")
        sp.add_argument("--no-warm", action="store_true", help="skip the warm-up pass (CPU: nothing to compile)")
        sp.add_argument("--only", default=None, help="compare: run only these servers (novamlx,mlx_lm.server,...)")
        sp.add_argument("--raw", action="store_true")
        sp.add_argument("--raw-prefill-batch", type=int, default=8)
        sp.add_argument("--agent", action="store_true", help="compare: also replay a multi-turn agent session")
        sp.add_argument("--sharded", default="", help="compare/shardcheck: also run ours sharded, BACKEND:RANKS")
    args = p.parse_args(argv)
    if args.cmd == "load":
        for c in _levels(args.concurrency):
            r = asyncio.run(run_load(args.base_url, args.model, concurrency=c, requests=c * args.rounds,
                                     input_len=args.input_len, output_len=args.output_len, rate=args.rate,
                                     api_key=args.api_key, temperature=args.temperature))
            print(json.dumps(r))
    elif args.cmd == "agent":
        for row in asyncio.run(agent_replay(args.base_url, args.model, turns=args.turns, turn_len=args.turn_len,
                                            output_len=args.output_len, api_key=args.api_key)):
            print(json.dumps(row))
    elif args.cmd == "mask":
        print(json.dumps(asyncio.run(mask_bench(args.base_url, args.model or "smollm2-135m-instruct", args.api_key,
                                                output_len=args.output_len))))
    elif args.cmd == "embed":
        print(json.dumps(asyncio.run(embed_bench(args.base_url, args.model or "all-minilm-l6-v2", args.api_key))))
    elif args.cmd == "probe":
        probe(args)
    elif args.cmd == "shardcheck":
        same = asyncio.run(shard_check(args))
        raise SystemExit(0 if same else 1)
    elif args.cmd == "prefix":
        print(json.dumps(asyncio.run(prefix_ttft(args.base_url, args.model, prefix_len=args.prefix_len,
                                                 api_key=args.api_key))))
    else:
        compare(args)


if __name__ == "__main__":
    main()
