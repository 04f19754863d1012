"""Speculative decoding on an edit task, side by side in one run:

    python -m novamlx_worker.bench_spec [--model M] [--k 6] [--tokens 200] [--streams 1] [--draft-layers N]
                                        [--sampling '{"logprobs": true}'] [--task rename|typo]

The model is asked to rewrite a ~300-token code block with small changes (greedy): rename a
variable everywhere (`rename`), or fix a misspelt word in a docstring (`typo`); the engine
runs in-process with drafts off, then on (and off again, to see the noise). Prints tok/s
(prefill included, and decode alone: from the first token to the last), the ratios, acceptance, and whether the outputs are identical (they must be). Drafts come from
n-gram lookup, or with --draft-layers N from a draft model built here out of the default
model's first N layers plus its norm and head (no smaller model with its tokenizer ships).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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
TASKS = {
    "rename": ("Rewrite this Python code exactly, but rename the variable `handle` to `fh` everywhere. "
               "Output only the code.\n\n```python\n" + CODE + "```"),
    "typo": ("Fix the spelling mistake in this code and output the whole corrected code.\n\n```python\n"
             + CODE.replace("Values from override win", "Values from overide win") + "```"),
}


def make_draft(out: Path, layers: int) -> Path:
    """The embedded model's first `layers` layers with its embeddings, norm and head, as an MLX folder."""
    import shutil

    import mlx.core as mx

    from .models.export import export
    from .models.loader import default_model_path

    full = out.parent / "full-export"
    if not (full / "config.json").exists():
        export(default_model_path(), full)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((full / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=1))
    weights = mx.load(str(full / "model.safetensors"))
    keep = {k: v for k, v in weights.items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    mx.save_safetensors(str(out / "model.safetensors"), keep, metadata={"format": "mlx"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full / name, out / name)
    return out


def run(path: str, k: int, tokens: int, streams: int, draft: str | None = None, sampling: dict | None = None,
        ask: str = TASKS["rename"]) -> dict:
    from protocol import messages as m

    from .engine.engine import Engine
    from .memory import MemoryEnforcer
    from .models.pool import ModelPool

    events = []
    specs = [path] + ([draft] if draft else [])
    eng = Engine(ModelPool(specs, [], "auto"), events.append, MemoryEnforcer("auto"), max_batch=max(streams, 1),
                 prefix_cache_bytes=0, ngram_k=0 if draft else k, draft=Path(draft).name if draft else "", draft_k=k)
    model_id = next(iter(eng.models.pool.entries))
    eng.models.get(model_id)

    def once(tag: str) -> tuple[float, list[str]]:
        rids = [f"{tag}-{i}" for i in range(streams)]
        for rid in rids:
            eng.handle(m.Generate(rid, model_id, m.Sampling(**{"temperature": 0, "max_tokens": tokens, "ignore_eos": True,
                                                             **(sampling or {})}),
                                  messages=[m.ChatMessage("user", ask)]))
        t = time.perf_counter()
        first = None  # when the first token came out: decode time excludes the prompt's prefill
        while eng.seqs:
            eng.step()
            if first is None and any(isinstance(e, m.Step) for e in events[-4:]):
                first = time.perf_counter()
        end = time.perf_counter()
        texts = ["".join(d.text for e in events if isinstance(e, m.Step) for d in e.deltas if d.id == r) for r in rids]
        return streams * tokens / (end - t), streams * (tokens - 1) / (end - first), texts

    once("warm")
    rate, decode, texts = once("timed")
    batch = eng.stats()["engine"]["batches"][model_id]
    info = batch.get("draft_model") or batch.get("ngram") or {}
    return {"rate": rate, "decode": decode, "texts": texts, "ngram": info}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench_spec")
    p.add_argument("--model", default=None, help="default: the embedded default model")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--draft-layers", type=int, default=0, help="draft with a model of the first N layers instead of n-grams")
    p.add_argument("--task", choices=sorted(TASKS), default="rename")
    p.add_argument("--sampling", type=json.loads, default={},
                   help='more sampling fields for every request, as JSON: {"logprobs": true}, {"frequency_penalty": 0.3}')
    args = p.parse_args(argv)
    preload_openblas()
    from protocol.naming import default_model_path

    path = args.model or default_model_path()
    draft = None
    if args.draft_layers:
        import tempfile

        draft = str(make_draft(Path(tempfile.mkdtemp()) / f"draft-{args.draft_layers}-layers", args.draft_layers))
    ask = TASKS[args.task]
    off = run(path, 0, args.tokens, args.streams, sampling=args.sampling, ask=ask)
    on = run(path, args.k, args.tokens, args.streams, draft, args.sampling, ask)
    off2 = run(path, 0, args.tokens, args.streams, sampling=args.sampling, ask=ask)
    print(json.dumps({"task": args.task, "drafts": f"model, first {args.draft_layers} layers" if draft else "n-gram",
                      "streams": args.streams, "tokens": args.tokens, "k": args.k, "sampling": args.sampling,
                      "off_tok_s": round(off["rate"], 1), "on_tok_s": round(on["rate"], 1),
                      "off_again_tok_s": round(off2["rate"], 1), "speedup": round(on["rate"] / off["rate"], 2),
                      "decode_tok_s": [round(r["decode"], 1) for r in (off, on, off2)],
                      "decode_speedup": round(on["decode"] / off["decode"], 2),
                      "identical": on["texts"] == off["texts"], "drafts_stats": on["ngram"],
                      "sample": on["texts"][0][:160]}))


if __name__ == "__main__":
    main()
