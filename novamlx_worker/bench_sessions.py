"""Turn-N time to first token of an agent-style conversation, three ways in one run:

    python -m novamlx_worker.bench_sessions [--model M] [--turns 12] [--turn-len 100] [--prefix-mb 4]

Every turn resends the whole conversation (prompt + each answer + a new user turn, token ids).
cold: no prefix cache, no session; prefix: a prefix cache of --prefix-mb (too small to hold the
conversation); session: the same small prefix cache plus a session. Prints TTFT per turn and
the last turn's side by side (engine in-process, greedy).
"""
from __future__ import annotations

import argparse
import json
import time

from .platform import preload_openblas


def replay(path: str, turns: int, turn_len: int, prefix_mb: float, session: str | None) -> list[float]:
    from protocol import messages as m

    from .engine.engine import Engine
    from .engine.sessions import Sessions
    from .memory import MemoryEnforcer
    from .models.pool import ModelPool

    events = []
    eng = Engine(ModelPool([path], [], "auto"), events.append, MemoryEnforcer("auto"), max_batch=4,
                 prefix_cache_bytes=int(prefix_mb * 1024**2), sessions=Sessions(None))
    model_id = next(iter(eng.models.pool.entries))
    vocab = eng.models.get(model_id).tokenizer.vocab_size
    prompt, ttfts = [(i * 7919) % vocab for i in range(turn_len)], []
    for t in range(turns):
        rid = f"turn{t}"
        start = time.perf_counter()
        eng.handle(m.Generate(rid, model_id, m.Sampling(temperature=0, max_tokens=16, ignore_eos=True,
                                                        logprobs=True), prompt_tokens=prompt, session=session))
        first = None
        while not any(isinstance(e, m.Finished) and e.id == rid for e in events):
            eng.step()
            if first is None and any(isinstance(e, m.Step) and any(d.id == rid for d in e.deltas) for e in events[-2:]):
                first = time.perf_counter() - start
        ttfts.append(first or time.perf_counter() - start)
        answer = [lp for e in events if isinstance(e, m.Step) for d in e.deltas if d.id == rid for lp in d.logprobs]
        tok = eng.models.get(model_id).tokenizer
        ids = [tok.encode(lp.token, add_special=False)[:1] or [0] for lp in answer]
        prompt = prompt + [i[0] for i in ids] + [((t + 3) * 104729 + j * 31) % vocab for j in range(turn_len)]
        events.clear()
    return ttfts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_sessions")
    p.add_argument("--model", default=None)
    p.add_argument("--turns", type=int, default=12)
    p.add_argument("--turn-len", type=int, default=100)
    p.add_argument("--prefix-mb", type=float, default=4.0)
    args = p.parse_args(argv)
    preload_openblas()
    from protocol.naming import default_model_path

    path = args.model or default_model_path()
    runs = {"cold": replay(path, args.turns, args.turn_len, 0, None),
            "prefix": replay(path, args.turns, args.turn_len, args.prefix_mb, None),
            "session": replay(path, args.turns, args.turn_len, args.prefix_mb, "bench")}
    for t in range(args.turns):
        print(json.dumps({"turn": t + 1, **{k: round(v[t] * 1000, 1) for k, v in runs.items()}}))
    last = {k: round(v[-1] * 1000, 1) for k, v in runs.items()}
    print(json.dumps({"last_turn_ttft_ms": last, "prefix_mb": args.prefix_mb, "turns": args.turns,
                      "turn_len": args.turn_len}))


if __name__ == "__main__":
    main()
