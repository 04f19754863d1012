"""N-gram speculative decoding on the solo path: drafts from the sequence's own tokens, and
output equal to plain greedy decoding token for token (tiny random model: its greedy output
falls into repeats, which the drafts then predict)."""
import pytest

from novamlx_worker.engine.engine import Engine
from novamlx_worker.engine.ngram import History
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool
from protocol import messages as m
from tests.fixtures.events import deltas, text_of


def propose(context: list[int], k: int, n_max: int = 4, n_min: int = 2) -> list[int]:
    """The reference History's index must match: a scan for the latest earlier occurrence of the
    context's last n tokens (longest n first), and the k tokens that followed it."""
    if k <= 0 or len(context) < n_min + 1:
        return []
    for n in range(min(n_max, len(context) - 1), n_min - 1, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):  # latest first, never the tail itself
            if context[start:start + n] == tail:
                return context[start + n:start + n + k]
    return []


def test_propose_takes_the_longest_latest_match():
    ctx = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert propose(ctx, 3) == [7, 8, 5]  # "1 2 3" last seen before the tail at index 5
    assert propose([5, 6, 7, 5, 6], 4) == [7, 5, 6]
    assert propose([1, 2, 3, 4], 3) == []  # nothing repeats
    assert propose([4, 4], 0) == [] and propose([4], 3) == []


def test_history_index_proposes_what_the_scan_finds():
    """History's n-gram index answers as the reference scan after every appended token, on
    random streams over small vocabularies (many repeats) and on the cases above."""
    import random

    rng = random.Random(5)
    for vocab in (3, 6, 40):
        tokens = [rng.randrange(vocab) for _ in range(300)]
        h = History(tokens[:5])
        for i in range(5, len(tokens)):
            for k in (1, 4):
                assert h.propose(k) == propose(tokens[:i], k), (vocab, i)
            h += [tokens[i]]
    h = History([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3])
    assert h.propose(3) == [7, 8, 5] and History([5, 6, 7, 5, 6]).propose(4) == [7, 5, 6]
    assert History([1, 2, 3, 4]).propose(3) == [] and History([4]).propose(3) == []
    long = [9] * 100 + [1, 2, 3] + list(range(10, 10 + History.WINDOW)) + [1, 2]
    assert History(long).propose(2) == [] and propose(long, 2) == [3, 10]  # a long prompt's head is not indexed
    assert len(History(long).after) <= 3 * History.WINDOW


def engine(path, k, kv=(0, 64), snapshots=0):
    events = []
    eng = Engine(ModelPool([str(path)], [], "auto"), events.append, MemoryEnforcer("90%"), max_batch=8, ngram_k=k,
                 prefix_cache_bytes=snapshots, kv=kv)
    eng.events = events
    return eng


def generate(eng, prompt, n, **sampling):
    rid = f"g{len(eng.events)}"
    eng.handle(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True, **sampling),
                          prompt_tokens=prompt))
    while not any(isinstance(e, (m.Finished, m.Error)) and e.id == rid for e in eng.events):
        eng.step()
    fin = next(e for e in eng.events if getattr(e, "id", None) == rid and isinstance(e, (m.Finished, m.Error)))
    assert isinstance(fin, m.Finished), fin
    text = text_of(eng.events, rid)
    return text, fin


PROMPTS = [list(range(100, 160)) * 2, [7, 8, 9] * 30, list(range(3000, 3050))]


@pytest.mark.parametrize("k", [2, 5])
def test_greedy_output_equals_plain_decoding(tiny_model, k):
    plain, spec = engine(tiny_model, 0), engine(tiny_model, k)
    for prompt in PROMPTS:
        want, fin = generate(plain, prompt, 60)
        got, fin_spec = generate(spec, prompt, 60)
        assert got == want and fin_spec.usage.completion_tokens == fin.usage.completion_tokens == 60
    drafts = spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]
    assert drafts["accepted"] > 0 and drafts["steps"] < 3 * 60  # several tokens per forward at times


def test_lone_rows_the_solo_drafts_cannot_serve_draft_in_the_batch(tiny_model):
    """A lone logprob or penalty row goes to the slot batch, which drafts for it (same output as
    without drafts); a processor without the drafts mark keeps its row from drafting."""
    spec, plain = engine(tiny_model, 4), engine(tiny_model, 0)
    for kw in ({"logprobs": True}, {"frequency_penalty": 0.2}):
        a, _ = generate(spec, PROMPTS[1], 30, **kw)
        b, _ = generate(plain, PROMPTS[1], 30, **kw)
        assert a == b
    assert spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]["accepted"] > 10
    assert spec.runners["tiny-llama"].solo is None
    runner = spec.runners["tiny-llama"]
    budget = [lambda c, x: x]  # a processor without the drafts mark
    seq = type("S", (), {"speculative": True, "sampling": m.Sampling()})()
    assert not runner._drafts_serve(seq, budget, in_batch=True) and runner._drafts_serve(seq, [], in_batch=True)


def test_handover_to_the_batch_mid_stream_keeps_the_output(tiny_model):
    """A second request arrives while a drafted stream runs: it moves into the batch and both
    answer as they would alone."""
    plain = engine(tiny_model, 0)
    want_a, _ = generate(plain, PROMPTS[1], 40)
    want_b, _ = generate(plain, PROMPTS[2], 20)
    assert second_arrives(engine(tiny_model, 4), (PROMPTS[1], 40), (PROMPTS[2], 20), steps=6) == (want_a, want_b)


def second_arrives(eng, a, b, steps, meanwhile=lambda eng: None):
    """Request a (prompt, max_tokens) runs alone for `steps` steps (then `meanwhile(eng)`), then b
    arrives; returns both texts once both end."""
    for rid, (prompt, n) in (("a", a), ("b", b)):
        eng.handle(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True),
                              prompt_tokens=prompt))
        for _ in range(steps if rid == "a" else 0):
            eng.step()
        if rid == "a":
            meanwhile(eng)
    while not {"a", "b"} <= {e.id for e in eng.events if isinstance(e, m.Finished)}:
        eng.step()
    return text_of(eng.events, "a"), text_of(eng.events, "b")


def test_rejection_sampling_keeps_the_target_distribution():
    """One position, a draft proposing token 2: the emitted token's distribution equals the
    target's (chi-square over 4,000 draws, 5 degrees of freedom, p > 0.001)."""
    import mlx.core as mx
    import numpy as np

    from novamlx_worker.engine.ngram import verify_sampled

    p = mx.array([[0.05, 0.10, 0.40, 0.25, 0.15, 0.05]])
    mx.random.seed(7)
    n, counts = 4000, np.zeros(6)
    uniforms = np.random.default_rng(7).random(n)
    for u in uniforms:
        first = verify_sampled(mx.concatenate([p, p]), [2], [float(u)], mx.random.categorical)[0]
        counts[first] += 1
    expected = np.array(p.tolist()[0]) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, (chi2, counts.tolist())  # 20.5: the 0.999 quantile at 5 degrees of freedom


def test_sampled_rows_draft_and_stay_reproducible(tiny_model):
    """A seeded sampled request with drafts: the same seed gives the same answer, drafts run."""
    eng = engine(tiny_model, 5)
    rid_texts = []
    for _ in range(2):
        rid = f"s{len(eng.events)}"
        eng.handle(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0.7, top_p=0.9, seed=11, max_tokens=40,
                                                            ignore_eos=True), prompt_tokens=PROMPTS[1]))
        while not any(isinstance(e, m.Finished) and e.id == rid for e in eng.events):
            eng.step()
        rid_texts.append(text_of(eng.events, rid))
    assert rid_texts[0] == rid_texts[1]
    assert eng.stats()["engine"]["batches"]["tiny-llama"]["ngram"]["steps"] > 0


def draft_engine(target, draft, k=4, prefix_cache_bytes=0):
    events = []
    pool = ModelPool([str(target), str(draft)], [], "auto")
    eng = Engine(pool, events.append, MemoryEnforcer("90%"), max_batch=8, prefix_cache_bytes=prefix_cache_bytes,
                 draft=draft.name, draft_k=k)
    eng.events = events
    return eng


@pytest.fixture(scope="module")
def twin(tiny_model, tmp_path_factory):
    """A draft that is the target's own copy (every draft accepted) and an unrelated one."""
    import shutil

    from tests.fixtures.tiny_models import build_tiny_llama

    root = tmp_path_factory.mktemp("drafts")
    same = root / "tiny-same"
    shutil.copytree(tiny_model, same)
    return same, build_tiny_llama(root / "tiny-other", seed=9)


def test_draft_model_keeps_the_greedy_output(tiny_model, twin):
    same, other = twin
    plain = engine(tiny_model, 0)
    for draft in (same, other):
        eng = draft_engine(tiny_model, draft)
        for prompt in PROMPTS:
            assert generate(eng, prompt, 40)[0] == generate(plain, prompt, 40)[0]
        stats = eng.stats()["engine"]["batches"]["tiny-llama"]["draft_model"]
        if draft is same:  # the target's own weights: every proposal is what it would say
            assert stats["proposed"] > 0 and stats["accepted"] == stats["proposed"]


def test_draft_with_another_tokenizer_is_left_out(tiny_model, tmp_path):
    import json

    from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_llama

    odd = build_tiny_llama(tmp_path / "tiny-odd", cfg={**TINY_LLAMA, "vocab_size": 1000})
    tok = json.loads((odd / "tokenizer.json").read_text())
    tok["model"]["vocab"] = dict(list(tok["model"]["vocab"].items())[:1000])
    (odd / "tokenizer.json").write_text(json.dumps(tok))
    eng = draft_engine(tiny_model, odd)
    text, fin = generate(eng, PROMPTS[0], 10)
    batch = eng.stats()["engine"]["batches"]["tiny-llama"]
    assert fin.usage.completion_tokens == 10 and "draft_model" not in batch
    assert "tiny-odd" in batch["draft_model_error"], batch  # why, for the operator


def test_drafts_that_keep_missing_fall_back_to_plain_pipelined_stretches(tiny_model, monkeypatch):
    """A drafter whose proposals are always rejected: after six misses the sequence decodes in
    plain stretches (8, 16, 32, 64 tokens, one missed draft between), so drafting forwards are few and the output is the
    plain one, also across a handover to the batch in the middle of a stretch."""
    from novamlx_worker.engine.ngram import NgramSolo

    plain = engine(tiny_model, 0)
    want, _ = generate(plain, PROMPTS[2], 120)
    want_b, _ = generate(plain, PROMPTS[0], 10)
    monkeypatch.setattr(NgramSolo, "_propose", lambda self, k: [49151] * k)  # a token the model never picks here
    spec = engine(tiny_model, 4)
    got, _ = generate(spec, PROMPTS[2], 120)
    assert got == want
    drafts = spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]
    # of 120 tokens: 6 misses, 8 plain ones, then one miss before each next stretch (16, 32, 64)
    assert drafts["accepted"] == 0 and drafts["steps"] <= 12

    def in_a_stretch(eng):
        assert eng.runners["tiny-llama"].solo.plain > 0

    # 11 steps: prefill, six missed drafts, then inside the first plain stretch
    got = second_arrives(engine(tiny_model, 4), (PROMPTS[2], 120), (PROMPTS[0], 10), steps=11, meanwhile=in_a_stretch)
    assert got == (want, want_b)


def run_together(eng, requests):
    """requests: (rid, prompt, n, sampling kwargs), submitted together; returns each text."""
    for rid, prompt, n, kw in requests:
        kw = dict(kw)
        speculative = kw.pop("speculative", True)
        eng.handle(m.Generate(rid, "tiny-llama", m.Sampling(**{"temperature": 0, "max_tokens": n, "ignore_eos": True,
                                                              **kw}), prompt_tokens=prompt, speculative=speculative))
    ids = {r[0] for r in requests}
    while not ids <= {e.id for e in eng.events if isinstance(e, (m.Finished, m.Error))}:
        eng.step()
    assert not [e for e in eng.events if isinstance(e, m.Error) and e.id in ids]
    return {rid: text_of(eng.events, rid) for rid in ids}


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama
    from tests.unit.test_kv_quant import WIDE

    return build_tiny_llama(tmp_path_factory.mktemp("ngram-wide") / "tiny-llama", seed=3, cfg=WIDE)


@pytest.mark.parametrize("kv", [(0, 64), (8, 64)])
def test_batched_rows_with_and_without_drafts_equal_plain_decoding(tiny_model, wide_llama, kv):
    """Greedy rows draft inside the slot batch beside a seeded sampled row and a logprob row
    (drafting too) and a `speculative: false` row (without drafts): every greedy answer equals the
    plain engine's, and the drafting rows got several tokens per forward."""
    requests = [("g0", PROMPTS[0], 60, {}), ("g1", PROMPTS[1], 50, {}), ("g2", PROMPTS[2], 40, {}),
                ("s", PROMPTS[1], 30, {"temperature": 0.9, "seed": 3}), ("l", PROMPTS[0], 20, {"logprobs": True}),
                ("x", PROMPTS[1], 30, {"speculative": False})]
    model = wide_llama if kv[0] else tiny_model  # quantized KV needs a head dim of a whole group
    want = run_together(engine(model, 0, kv), requests)
    spec = engine(model, 4, kv)
    got = run_together(spec, requests)
    # the seeded sampled row drafts too: its draws come in another order, its distribution is the same
    assert {k: v for k, v in got.items() if k != "s"} == {k: v for k, v in want.items() if k != "s"} and got["s"]
    drafts = spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]
    assert drafts["accepted"] > 20 and drafts["tokens_per_step"] > 1.5
    runner = spec.runners["tiny-llama"]
    assert runner.solo is None and runner.batch.kv.bits == kv[0]  # every row ran in the batch, in this KV format


def test_sampled_rows_draft_in_the_batch_by_rejection_sampling(tiny_model):
    """Sampled rows draft in the batch too. With top_k 1 the sampling distribution is a point
    mass on the argmax, so rejection sampling must keep exactly the drafts greedy decoding
    keeps: the answers equal greedy ones. Seeded sampled rows batched with drafts are reproducible."""
    greedy = [(f"g{i}", p, 40, {}) for i, p in enumerate(PROMPTS)]
    want = run_together(engine(tiny_model, 0), greedy)
    spec = engine(tiny_model, 4)
    point = run_together(spec, [(f"g{i}", p, 40, {"temperature": 0.8, "top_k": 1}) for i, p in enumerate(PROMPTS)])
    assert point == want
    drafts = spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]
    assert drafts["accepted"] > 10
    seeded = [(f"s{i}", p, 30, {"temperature": 1.0, "seed": 11 + i}) for i, p in enumerate(PROMPTS)]
    assert run_together(engine(tiny_model, 4), seeded) == run_together(engine(tiny_model, 4), seeded)


def test_logprob_rows_draft_in_the_batch_with_every_tokens_logprobs(tiny_model):
    """A row that asks for logprobs drafts in the batch; each kept token (drafted, correction or
    bonus) gets the target's logprob and alternatives: the same entries as plain decoding."""
    requests = [("l0", PROMPTS[0], 40, {"logprobs": True, "top_logprobs": 3}), ("l1", PROMPTS[1], 40,
                {"logprobs": True}), ("g", PROMPTS[2], 30, {})]
    plain, spec = engine(tiny_model, 0), engine(tiny_model, 4)
    want, got = run_together(plain, requests), run_together(spec, requests)
    assert got == want
    for rid in ("l0", "l1"):
        a = [lp for d in deltas(plain.events, rid) for lp in d.logprobs or []]
        b = [lp for d in deltas(spec.events, rid) for lp in d.logprobs or []]
        assert len(a) == len(b) == 40 and [x.token for x in a] == [x.token for x in b]
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a, b)) < 1e-3
        assert [[t.token for t in x.top] for x in a] == [[t.token for t in y.top] for y in b]
        assert any(len(d.logprobs or []) > 1 for d in deltas(spec.events, rid))  # several kept tokens in a step
    drafts = spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]
    assert drafts["accepted"] > 10 and spec.runners["tiny-llama"].solo is None


def test_rows_with_penalties_and_grammars_draft_in_the_batch(tiny_model):
    """Rows whose logits are processed (OpenAI penalties, repetition penalty, a JSON grammar) draft
    in the batch and are verified against their processed distribution, position by position, the
    grammar rolling back what was not kept: every answer equals plain decoding's, several tokens
    per step. A top_k 1 sampled penalty row takes the same path through rejection sampling."""
    schema = {"type": "json_schema", "schema": {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "array", "items": {"type": "integer"}}}, "required": ["a", "b"]}}
    requests = [("p", PROMPTS[1], 40, {"presence_penalty": 0.3, "frequency_penalty": 0.2, "logprobs": True}),
                ("r", PROMPTS[0], 40, {"repetition_penalty": 1.05}),
                ("j", PROMPTS[1], 40, {"response_format": {"type": "json_object"}}),
                ("s", PROMPTS[1], 40, {"response_format": schema, "logprobs": True}),
                ("t", PROMPTS[0], 30, {"temperature": 0.7, "top_k": 1, "frequency_penalty": 0.1}),
                ("g", PROMPTS[2], 30, {})]
    plain, spec = engine(tiny_model, 0), engine(tiny_model, 4)
    want = run_together(plain, requests)
    got = run_together(spec, requests)
    assert got == want
    assert got["s"].startswith("{")
    for rid in "ps":  # several kept tokens in one step (their logprob entries count them)
        assert any(len(d.logprobs or []) > 1 for d in deltas(spec.events, rid)), rid
    drafts = spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]
    assert drafts["accepted"] > 20 and spec.runners["tiny-llama"].solo is None


def test_draft_model_drafts_for_batched_rows(tiny_model, twin):
    """Several rows with a draft model: greedy rows, a logprob row, a penalty row, a top_k 1
    sampled row (rejection sampling against a point mass keeps what greedy keeps) and a
    `speculative: false` row share the slot batch, and every answer equals plain decoding's. The
    target's twin as draft has every proposal accepted; an unrelated draft few, output unchanged."""
    same, other = twin
    requests = [("g0", PROMPTS[0], 40, {}), ("g1", PROMPTS[2], 30, {}), ("l", PROMPTS[1], 25, {"logprobs": True}),
                ("p", PROMPTS[1], 30, {"frequency_penalty": 0.3}), ("t", PROMPTS[2], 25, {"temperature": 0.8, "top_k": 1}),
                ("x", PROMPTS[0], 20, {"speculative": False})]
    want = run_together(engine(tiny_model, 0), requests)
    for draft in (same, other):
        eng = draft_engine(tiny_model, draft)
        assert run_together(eng, requests) == want
        stats = eng.stats()["engine"]["batches"]["tiny-llama"]["draft_model"]
        runner = eng.runners["tiny-llama"]
        assert runner.solo is None and stats["proposed"] > (50 if draft is same else 10), stats
        # a second round on the same engine reuses freed draft slots (rows whose target is the plain argmax:
        # the twin's proposals are all accepted, where the penalty row's processed target could differ)
        assert run_together(eng, [(f"{rid}2", p, n, kw) for rid, p, n, kw in requests[:3]]) == {
            f"{rid}2": want[rid] for rid, *_ in requests[:3]}
        after = eng.stats()["engine"]["batches"]["tiny-llama"]["draft_model"]
        if draft is same:
            assert after["accepted"] - stats["accepted"] == after["proposed"] - stats["proposed"] > 20
            assert after["tokens_per_step"] > 2.5
            # admission prices the draft's KV beside the target's (the twin's costs as much)
            assert runner.draft_kv_ratio == 1.0 and runner.kv_cost([1000]) == 2 * runner.batch.kv_cost([1000])


@pytest.mark.parametrize("budget", [8, 30])
def test_thinking_budget_rows_draft_up_to_their_budget(tiny_model, monkeypatch, budget):
    """A scripted reasoning answer ("step" sixty times) with a thinking budget, alone and beside
    another row: with n-gram drafts the reasoning is closed at the same token and the answer is the
    same as without; drafts land before the budget and after the close tag, never across it."""
    from tests.conftest import SCRIPTS
    from tests.fixtures.events import deltas

    monkeypatch.setenv("NOVAMLX_TEST_SCRIPTS", str(SCRIPTS))

    def answer(eng, together: bool):
        rids = [f"t{len(eng.events)}"] + ([f"o{len(eng.events)}"] if together else [])
        eng.handle(m.Generate(rids[0], "tiny-llama", m.Sampling(temperature=0, max_tokens=120, thinking_budget=budget),
                              messages=[m.ChatMessage(role="user", content="SCRIPT:long_think")]))
        if together:
            eng.handle(m.Generate(rids[1], "tiny-llama", m.Sampling(temperature=0, max_tokens=40, ignore_eos=True),
                                  prompt_tokens=PROMPTS[1]))
        while not set(rids) <= {e.id for e in eng.events if isinstance(e, (m.Finished, m.Error))}:
            eng.step()
        ds = deltas(eng.events, rids[0])
        return "".join(d.reasoning or "" for d in ds), "".join(d.text or "" for d in ds)

    for together in (False, True):
        plain, spec = engine(tiny_model, 0), engine(tiny_model, 4)
        want, got = answer(plain, together), answer(spec, together)
        assert got == want and want[0].count("step") < 60 and want[1], (got, want)
        assert spec.stats()["engine"]["batches"]["tiny-llama"]["ngram"]["accepted"] > 10


def test_the_draft_reuses_its_own_prefix_cache(tiny_model, twin):
    """With prefix caching on, the draft model keeps its prompt KV in its own prefix cache: a resent
    prompt (an agent's next turn) is found there, alone and in the batch, and answers stay the same."""
    same, _ = twin
    eng = draft_engine(tiny_model, same, prefix_cache_bytes=64 * 1024**2)
    prompt = PROMPTS[0] + PROMPTS[2]  # 170 tokens: two whole 64-token blocks
    first = generate(eng, prompt, 20)[0]
    draft_cache = eng.models.caches[same.name]
    assert draft_cache.stats.hits == 0 and len(draft_cache.blocks) == 2
    assert generate(eng, prompt, 20)[0] == first
    assert draft_cache.stats.hits == 1 and draft_cache.stats.tokens_saved == 128
    got = run_together(eng, [("a", prompt, 20, {}), ("b", prompt + [5, 6, 7], 20, {})])
    assert got["a"] == first and draft_cache.stats.hits == 3


def test_sampled_drafts_keep_a_tiny_models_distribution(tiny_model):
    """Rejection sampling on a tiny model's real logits (sharpened like a trained model's, so that
    temperature 0.7 and top-p 0.9 leave a few dozen tokens): over 1,200 seeded verifications of a
    two-token draft, the first emitted token follows the target's distribution at its position and,
    when the first draft token was kept, the second follows the target's distribution after it
    (chi-square, p > 0.001 each)."""
    from collections import Counter

    import mlx.core as mx

    from novamlx_worker.engine.ngram import verify
    from novamlx_worker.sampling import log_probs, make_sampler

    model = ModelPool([str(tiny_model)], [], "auto").get("tiny-llama").model
    model.model.norm.weight = model.model.norm.weight * 4
    sampling = dict(temperature=0.7, top_p=0.9)
    probe = make_sampler(m.Sampling(**sampling))
    ctx = PROMPTS[1][:20]

    def dist(logits):
        return probe.probs(log_probs(logits[None].astype(mx.float32)))[0]

    p0 = dist(model(mx.array(ctx)[None])[0, -1])
    d1 = int(mx.argmax(p0).item())
    p1 = dist(model(mx.array(ctx + [d1])[None])[0, -1])
    d2 = int(mx.argsort(-p1)[1].item())  # the second most likely: rejected often
    logits = model(mx.array(ctx + [d1, d2])[None])[0, -3:]  # the target at each draft position
    first, second = Counter(), Counter()
    for seed in range(1200):
        out = verify([d1, d2], logits, make_sampler(m.Sampling(**sampling, seed=seed)))
        first[out[0]] += 1
        if out[0] == d1:
            second[out[1]] += 1
    for counts, p in ((first, p0), (second, p1)):
        chi2, df = chi_square(counts, p.tolist())
        assert df >= 3 and chi2 < chi2_999(df), (chi2, df, counts.most_common(8))
    assert 0.05 < second[d2] / sum(second.values()) < 0.95  # the second draft token was kept and rejected


def chi_square(counts, p: list[float]) -> tuple[float, int]:
    """Pearson's statistic over the tokens expected at least 5 times (the rest pooled) and its degrees of freedom."""
    n = sum(counts.values())
    big = [t for t, q in enumerate(p) if q * n >= 5]
    cells = [(counts.get(t, 0), p[t] * n) for t in big]
    rest_expected = n - sum(e for _, e in cells)
    if rest_expected >= 5:
        cells.append((n - sum(o for o, _ in cells), rest_expected))
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1


def chi2_999(df: int) -> float:
    """The chi-square distribution's 0.999 quantile (Wilson-Hilferty's approximation)."""
    z = 3.0902
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_draft_slots_give_back_a_long_rows_capacity(tiny_model, twin):
    """A long row leaves the batch while a short one drafts on: the draft's buffers shrink to what
    the short row needs, and both answers equal plain decoding's."""
    same, _ = twin
    requests = [("long", PROMPTS[0] * 3, 8, {}), ("short", PROMPTS[1], 60, {})]
    want = run_together(engine(tiny_model, 0), requests)
    eng = draft_engine(tiny_model, same)
    capacities = []
    for rid, prompt, n, kw in requests:
        eng.handle(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True),
                              prompt_tokens=prompt))
    while not {"long", "short"} <= {e.id for e in eng.events if isinstance(e, m.Finished)}:
        eng.step()
        drafts = eng.runners["tiny-llama"].batch.drafts
        capacities.append(drafts.kv._capacity())
    assert {rid: text_of(eng.events, rid) for rid in want} == want
    assert max(capacities) >= 512 and 0 < min(c for c in capacities[capacities.index(max(capacities)):] if c) <= 256


def test_ngram_match_lengths_bound_the_lookup_and_reach_every_row(tiny_model):
    """History looks up n-grams of n_min..n_max tokens only (longest first); the engine's
    ngram_match reaches the solo path's history and the batch rows' histories."""
    h = History([5, 6, 7, 1, 2, 9, 6, 7], n_min=3, n_max=3)
    assert h.propose(4) == []  # only the 2-gram (6, 7) recurs
    h.append(1)
    assert h.propose(4) == [2, 9, 6, 7]  # the 3-gram (6, 7, 1) did
    assert History([5, 6, 7, 1, 2, 9, 6, 7]).propose(2) == [1, 2]  # default 2..4: the 2-gram is enough
    eng = Engine(ModelPool([str(tiny_model)], [], "auto"), [].append, MemoryEnforcer("90%"), max_batch=8, ngram_k=4,
                 prefix_cache_bytes=0, ngram_match=(3, 7))
    for i in range(2):
        eng.handle(m.Generate(f"r{i}", "tiny-llama", m.Sampling(temperature=0, max_tokens=8, ignore_eos=True,
                                                               logprobs=i == 1), prompt_tokens=list(range(100, 140))))
        eng.step()
    runner = eng.runners["tiny-llama"]
    histories = [r.history for r in runner.batch.by_rid.values()] + ([runner.solo.seen] if runner.solo else [])
    assert histories and all((h.n_min, h.n_max) == (3, 7) for h in histories)
