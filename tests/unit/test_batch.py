"""engine/batch.py against the model decoding each sequence alone (mlx-lm's plain KVCache).

Rows join while others decode, leave mid-stream, outgrow the first slot bucket and the
first 256-column capacity, start from a cached prefix; every row's logprobs must match
its alone run and its KV must continue like the alone cache.
"""
import random

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from novamlx_worker.engine.batch import Batch, Row
from novamlx_worker.models.loader import load


@pytest.fixture(scope="module")
def model(tiny_model):
    return load(str(tiny_model)).model


def alone(model, prompt, n):
    """(tokens, logprob rows) of greedy decoding `prompt` by itself."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1].astype(mx.float32)
    tokens, rows = [], []
    for _ in range(n):
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        t = int(mx.argmax(lp, axis=-1).item())
        tokens.append(t)
        rows.append(lp[0])
        logits = model(mx.array([[t]]), cache=cache)[:, -1].astype(mx.float32)
    return tokens, rows


def drive(batch, arrivals, until_done=2000):
    """arrivals: {step: [(row, tokens, cache)]}. Returns {rid: [Out, ...]}."""
    outs = {}
    for step in range(until_done):
        for row, tokens, cache in arrivals.get(step, []):
            batch.add(row, tokens, cache)
        for o in batch.step():
            outs.setdefault(o.rid, []).append(o)
            if o.finish_reason:
                batch.finished(o.rid)
        if step > max(arrivals) and batch.active == 0:
            return outs
    raise AssertionError("the batch never drained")


def test_rows_joining_and_leaving_match_each_alone(model):
    rng = random.Random(3)
    # lengths cross the first capacity bucket (256) and the first slot bucket (2)
    prompts = [[rng.randrange(1, 40000) for _ in range(n)] for n in (3, 17, 40, 300, 9, 1, 70, 25)]
    lengths = [12, 5, 20, 8, 15, 6, 10, 9]
    refs = [alone(model, p, n) for p, n in zip(prompts, lengths)]
    batch = Batch(model, max_batch=8, prefill_step=32, prefill_batch=3, min_slots=2)
    arrivals = {}
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        row = Row(i, None, [], set(), n, known=len(p), logprobs=True)
        arrivals.setdefault((i * 3) % 7, []).append((row, p, None))
    outs = drive(batch, arrivals)
    for i, (tokens, rows) in enumerate(refs):
        got = outs[i]
        assert [o.token for o in got] == tokens, f"row {i}"
        assert got[-1].finish_reason == "length" and all(o.finish_reason is None for o in got[:-1])
        for o, ref in zip(got, rows):
            assert mx.allclose(o.logprobs, ref, atol=2e-4).item(), f"row {i} logprobs"
        kv = got[-1].cache  # the finished row's KV continues like the alone cache
        assert kv[0].offset == len(prompts[i]) + lengths[i]


def test_removed_row_frees_its_slot_and_keeps_its_kv(model):
    rng = random.Random(4)
    prompts = [[rng.randrange(1, 40000) for _ in range(20)] for _ in range(3)]
    refs = [alone(model, p, 10) for p in prompts]
    batch = Batch(model, max_batch=2, prefill_step=64, prefill_batch=2, min_slots=2)
    for i, p in enumerate(prompts[:2]):
        batch.add(Row(i, None, [], set(), 10, known=len(p)), p, None)
    got = {0: [], 1: [], 2: []}
    removed = None
    for step in range(200):
        for o in batch.step():
            got[o.rid].append(o.token)
            if o.finish_reason:
                batch.finished(o.rid)
        if removed is None and len(got[0]) == 4:
            removed = batch.remove(0)  # mid-stream, e.g. a client hang-up
            batch.add(Row(2, None, [], set(), 10, known=20), prompts[2], None)  # takes the freed slot
        if batch.active == 0:
            break
    assert got[1] == refs[1][0] and got[2] == refs[2][0]
    assert got[0] == refs[0][0][: len(got[0])]
    # the KV it left with holds the prompt and the tokens the caller has seen, nothing else
    assert removed[0].offset == 20 + len(got[0]) - 1 or removed[0].offset == 20 + len(got[0])
    assert len(batch.slots) == 2 and batch.active == 0


def test_cached_prefix_and_processors(model):
    rng = random.Random(5)
    prompt = [rng.randrange(1, 40000) for _ in range(50)]
    ref_tokens, _ = alone(model, prompt, 8)
    cache = make_prompt_cache(model)
    model(mx.array(prompt[:30])[None], cache=cache)
    banned = ref_tokens[0]

    def ban(context, logits):  # a logits processor: the alone run's first pick is off limits
        return mx.where(mx.arange(logits.shape[-1]) == banned, -1e9, logits)

    batch = Batch(model, max_batch=4, prefill_step=16, prefill_batch=2)
    outs = drive(batch, {0: [(Row(0, None, [], set(), 8, known=50), prompt[30:], cache),
                             (Row(1, None, [ban], set(), 3, known=50), prompt, None)]})
    assert [o.token for o in outs[0]] == ref_tokens  # prefilled only the 20 tokens after the prefix
    assert banned not in [o.token for o in outs[1]]


def test_seeded_row_samples_the_same_beside_others(model):
    """Per-sequence RNG: a seeded row's tokens do not depend on what else is in the batch;
    unseeded rows with like settings are sampled together and still follow their settings."""
    from novamlx_worker.sampling import make_sampler
    from protocol.messages import Sampling

    rng = random.Random(6)
    prompts = [[rng.randrange(1, 40000) for _ in range(12)] for _ in range(4)]

    def seeded():
        return make_sampler(Sampling(temperature=1.5, seed=7))

    lone = drive(Batch(model, max_batch=4, prefill_step=64, prefill_batch=4),
                 {0: [(Row(0, seeded(), [], set(), 12, known=12), prompts[0], None)]})
    rows = [(Row(0, seeded(), [], set(), 12, known=12), prompts[0], None)]
    rows += [(Row(i, make_sampler(Sampling(temperature=0.9, top_k=5)), [], set(), 12, known=12), prompts[i], None)
             for i in (1, 2)]
    rows += [(Row(3, None, [], set(), 12, known=12, logprobs=True), prompts[3], None)]
    together = drive(Batch(model, max_batch=4, prefill_step=64, prefill_batch=4), {0: rows})
    assert [o.token for o in together[0]] == [o.token for o in lone[0]]
    assert [o.token for o in together[3]] == alone(model, prompts[3], 12)[0]  # greedy beside samplers
    for i in (1, 2):  # top_k=5: every pick is among the 5 best of its row
        ref_cache = make_prompt_cache(model)
        logits = model(mx.array(prompts[i])[None], cache=ref_cache)[:, -1]
        first = together[i][0].token
        assert first in mx.argsort(-logits[0])[:5].tolist()


def test_kernel_path_plumbing_on_cpu(tmp_path, monkeypatch):
    """The CUDA branch (full slot buffers, per-row key counts, no mask) with the kernel replaced
    by what it computes in plain MLX; the kernel itself is checked on a GPU by
    `python -m novamlx_worker.bench_step --check --check-batch` (CI has no GPU)."""
    import sys

    from novamlx_worker.engine import ragged
    from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_llama

    # the kernel takes head dims of 64-256
    model = load(str(build_tiny_llama(tmp_path / "m", cfg={**TINY_LLAMA, "head_dim": 64}))).model

    def reference(q, k, v, scale, lens):
        mask = (mx.arange(k.shape[2])[None] < lens[:, None])[:, None, None, :]
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)

    module = sys.modules[type(model).__module__]
    monkeypatch.setattr(module, "scaled_dot_product_attention", module.scaled_dot_product_attention)  # restored after
    monkeypatch.setattr(ragged, "available", lambda: True)
    monkeypatch.setattr(ragged, "_warm", lambda *a: True)
    monkeypatch.setattr(ragged, "attention", reference)
    rng = random.Random(7)
    prompts = [[rng.randrange(1, 40000) for _ in range(n)] for n in (4, 30, 270)]
    refs = [alone(model, p, 6)[0] for p in prompts]
    batch = Batch(model, max_batch=4, prefill_step=64, prefill_batch=2)
    assert batch.use_kernel
    outs = drive(batch, {0: [(Row(i, None, [], set(), 6, known=len(p)), p, None) for i, p in enumerate(prompts)]})
    assert [[o.token for o in outs[i]] for i in range(3)] == refs
