"""N-gram speculative decoding on an edit task, side by side in one run:

    python -m novamlx_worker.bench_spec [--model M] [--k 6] [--tokens 200] [--streams 1]

The model is asked to rewrite a ~300-token code block with small changes (greedy); the engine
runs in-process with drafts off, then on (and off again, to see the noise). Prints tok/s,
the ratio, acceptance, and whether the outputs are identical (they must be).
"""
from __future__ import annotations

import argparse
import json
import time

from .platform import preload_openblas

CODE = '''def load_settings(path):
    """Read the settings file and return a dict of values."""
    settings = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise ValueError(f"line {number}: expected key = value")
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def save_settings(path, settings):
    """Write the settings back, one key = value per line, sorted by key."""
    with open(path, "w", encoding="utf-8") as handle:
        for key in sorted(settings):
            handle.write(f"{key} = {settings[key]}\\n")


def merge_settings(base, override):
    """Values from override win; keys only in base are kept."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = value
    return merged
'''
ASK = ("Rewrite this Python code exactly, but rename the variable `handle` to `fh` everywhere. "
       "Output only the code.\n\n```python\n" + CODE + "```")


def run(path: str, k: int, tokens: int, streams: int) -> dict:
    from protocol import messages as m

    from .engine.engine import Engine
    from .memory import MemoryEnforcer
    from .models.pool import ModelPool

    events = []
    eng = Engine(ModelPool([path], [], "auto"), events.append, MemoryEnforcer("auto"), max_batch=max(streams, 1),
                 prefix_cache_bytes=0, ngram_k=k)
    model_id = next(iter(eng.models.pool.entries))
    eng.models.get(model_id)

    def once(tag: str) -> tuple[float, list[str]]:
        rids = [f"{tag}-{i}" for i in range(streams)]
        for rid in rids:
            eng.handle(m.Generate(rid, model_id, m.Sampling(temperature=0, max_tokens=tokens, ignore_eos=True),
                                  messages=[m.ChatMessage("user", ASK)]))
        t = time.perf_counter()
        while eng.seqs:
            eng.step()
        elapsed = time.perf_counter() - t
        texts = ["".join(d.text for e in events if isinstance(e, m.Step) for d in e.deltas if d.id == r) for r in rids]
        return streams * tokens / elapsed, texts

    once("warm")
    rate, texts = once("timed")
    info = eng.stats()["engine"]["batches"][model_id].get("ngram") or {}
    return {"rate": rate, "texts": texts, "ngram": info}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_spec")
    p.add_argument("--model", default=None, help="default: the embedded default model")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--streams", type=int, default=1)
    args = p.parse_args(argv)
    preload_openblas()
    from protocol.naming import default_model_path

    path = args.model or default_model_path()
    off = run(path, 0, args.tokens, args.streams)
    on = run(path, args.k, args.tokens, args.streams)
    off2 = run(path, 0, args.tokens, args.streams)
    print(json.dumps({"streams": args.streams, "tokens": args.tokens, "k": args.k,
                      "off_tok_s": round(off["rate"], 1), "on_tok_s": round(on["rate"], 1),
                      "off_again_tok_s": round(off2["rate"], 1), "speedup": round(on["rate"] / off["rate"], 2),
                      "identical": on["texts"] == off["texts"], "ngram": on["ngram"],
                      "sample": on["texts"][0][:160]}))


if __name__ == "__main__":
    main()
