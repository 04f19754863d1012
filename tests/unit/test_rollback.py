"""Drafts on models whose caches cannot simply be cut back: gemma3_text (sliding-window layers,
wrapped here) and lfm2 (short-convolution state), tiny random models. After a rejected draft
the state equals a cold prefill of the kept tokens, and n-gram and draft-model decoding give
the plain greedy output token for token."""
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache, make_prompt_cache

from novamlx_worker.engine.rollback import checkpoint, take_back
from novamlx_worker.models.pool import ModelPool
from tests.fixtures.tiny_models import TINY_GEMMA3, TINY_LFM2, TINY_LLAMA, build_tiny_llama, build_tiny_mlx
from tests.unit.test_hybrid_prefix import PROMPT
from tests.unit.test_ngram import draft_engine, engine

FAMILIES = {"tiny-gemma3-text": TINY_GEMMA3, "tiny-lfm2": TINY_LFM2, "tiny-llama": TINY_LLAMA}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp("rollback")
    if name == "tiny-llama":
        return name, build_tiny_llama(root / name, seed=5)
    return name, build_tiny_mlx(root / name, FAMILIES[name], seed=5)


def prefill(model, tokens):
    cache = make_prompt_cache(model)
    for i in range(0, len(tokens), 64):
        model(mx.array(tokens[i:i + 64])[None], cache=cache)
    return cache


def test_state_after_a_rejection_equals_a_cold_prefill(family):
    name, path = family
    model = ModelPool([str(path)], [], "auto").get(name).model
    cache = prefill(model, PROMPT)
    kinds = {type(c) for c in cache}
    fed = [501, 502, 503, 504, 505]  # an input and a 4-token draft, of which 1 is kept
    saved = checkpoint(cache, len(fed))
    assert (saved is None) == (name == "tiny-llama")  # plain KV is cut; a wrapped window or conv state is not
    model(mx.array(fed)[None], cache=cache)
    take_back(model, cache, saved, fed, 2)
    cold = prefill(model, PROMPT + fed[:2])
    compared = 0
    for c, w in zip(cache, cold):
        assert type(c) is type(w)
        if isinstance(c, ArraysCache):
            for a, b in zip(c.state, w.state):
                assert (a is None) == (b is None)
                if a is not None:
                    assert np.allclose(np.array(a), np.array(b), atol=1e-5)
                    compared += 1
        elif type(c) is KVCache:
            n = c.offset
            assert n == w.offset == len(PROMPT) + 2
            assert np.allclose(np.array(c.keys[:, :, :n]), np.array(w.keys[:, :, :n]), atol=1e-5)
        elif isinstance(c, RotatingKVCache):
            assert c.offset == w.offset
    # and what follows is the same: the next tokens' logits from both states
    nxt = mx.array([[7, 8, 9]])
    a, b = model(nxt, cache=cache), model(nxt, cache=cold)
    assert np.allclose(np.array(a), np.array(b), atol=1e-4), name
    assert (compared > 0) == (ArraysCache in kinds)  # the convolution states were compared
    assert (RotatingKVCache in kinds) == (name == "tiny-gemma3-text")


def test_drafts_partly_kept_keep_the_greedy_output(family, monkeypatch, tmp_path):
    """One stream whose drafter proposes the next two tokens of the plain answer and then a wrong
    one: every drafting step keeps two and rejects one, so the state is taken back every time; the
    answer equals plain greedy decoding. Then a draft model, the target's twin (all kept) and an
    unrelated random model of the same family (all rejected): the same answer again."""
    import shutil

    from novamlx_worker.engine.ngram import NgramSolo

    name, path = family
    prompt = PROMPT[:100]
    want, _ = generate_as(engine(path, 0), name, prompt, 40)
    from mlx_lm.generate import generate_step

    model = ModelPool([str(path)], [], "auto").get(name).model
    ref_tokens = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=40)]  # mlx-lm's greedy ids

    def propose(self, k):
        i = len(self.seen) - len(prompt)
        return ref_tokens[i:i + 2] + [49151] if i + 2 < len(ref_tokens) else []

    with monkeypatch.context() as mp:
        mp.setattr(NgramSolo, "_propose", propose)
        spec = engine(path, 4)
        got, _ = generate_as(spec, name, prompt, 40)
    assert got == want
    stats = spec.stats()["engine"]["batches"][name]["ngram"]
    # every step (but where the answer's end cut it) kept two and rejected one
    steps, rejected = stats["steps"], stats["proposed"] - stats["accepted"]
    assert steps > 5 and stats["accepted"] >= 2 * (steps - 1) and rejected >= steps - 1, stats
    twin = tmp_path / f"twin-{name}"
    shutil.copytree(path, twin)
    other = (build_tiny_llama(tmp_path / f"other-{name}", seed=9) if name == "tiny-llama"
             else build_tiny_mlx(tmp_path / f"other-{name}", FAMILIES[name], seed=9))
    for draft in (twin, other):
        eng = draft_engine(path, draft)
        assert generate_as(eng, name, prompt, 40)[0] == want
        stats = eng.stats()["engine"]["batches"][name]["draft_model"]
        assert stats["proposed"] > 0 and (stats["accepted"] == stats["proposed"]) == (draft is twin), stats


def generate_as(eng, model, prompt, n):
    from protocol import messages as m
    from tests.fixtures.events import text_of

    rid = f"r{len(eng.events)}"
    eng.handle(m.Generate(rid, model, m.Sampling(temperature=0, max_tokens=n, ignore_eos=True),
                          prompt_tokens=prompt))
    while not any(isinstance(e, (m.Finished, m.Error)) and e.id == rid for e in eng.events):
        eng.step()
    fin = next(e for e in eng.events if getattr(e, "id", None) == rid and isinstance(e, (m.Finished, m.Error)))
    assert isinstance(fin, m.Finished), fin
    return text_of(eng.events, rid), fin


def test_rows_of_every_cache_kind_draft_together_in_the_slot_batch(family, monkeypatch, tmp_path):
    """With drafts on, sliding-window models (window layers in rings) and hybrid ones (conv state
    recomputed for rows that kept less than they were fed) batch in the slot batch and draft
    there: three rows (one whose window wraps its ring) with a drafter that keeps two tokens and
    rejects one every step, then a twin draft model (all kept) and an unrelated one (all
    rejected), give each row's plain answer alone. (A draft model with state drafts on the solo
    path only: its rows cannot be cut back by length.)"""
    import shutil

    from novamlx_worker.engine.ngram import History
    from tests.unit.test_hybrid_prefix import answer

    name, path = family
    assert runner_path(engine(path, 0), name, [PROMPT[:20]]) == ("slots" if name == "tiny-llama" else "mlx-lm BatchGenerator")
    prompts = [PROMPT[:100], PROMPT[40:240], PROMPT[5:60]]  # 200 + 40 tokens: past the 32 + 128 ring
    alone = [answer(engine(path, 0), name, [p], n=40)[0][0] for p in prompts]
    from mlx_lm.generate import generate_step

    model = ModelPool([str(path)], [], "auto").get(name).model
    refs = [[int(t) for t, _ in generate_step(mx.array(p), model, max_tokens=40)] for p in prompts]

    def propose(self, k):
        for p, ref in zip(prompts, refs):
            if list(self[:len(p)]) == p:
                i = len(self) - len(p)
                return ref[i:i + 2] + [49151] if i + 2 < len(ref) else []
        raise AssertionError("a history from no prompt")

    with monkeypatch.context() as mp:
        mp.setattr(History, "propose", propose)
        spec = engine(path, 4, snapshots=64 << 20)
        assert runner_path(spec, name, prompts) == "slots"
        got, _ = answer(spec, name, prompts, n=40)
    assert got == alone
    stats = spec.stats()["engine"]["batches"][name]["ngram"]
    assert stats["steps"] > 10 and stats["accepted"] >= stats["steps"] and stats["proposed"] > stats["accepted"], stats
    if name != "tiny-llama":  # each answer's state, kept as its row left the batch, equals a cold prefill's
        runner = spec.runners[name]
        for p in prompts:
            tokens = max((t for t in runner.snapshots.entries if list(t[:len(p)]) == p), key=len)
            assert len(tokens) >= len(p) + 39  # the answer (its last token too, when a queued step fed it)
            assert_same_state(model, runner.snapshots.entries[tokens][0], prefill(model, list(tokens)))
    twin = tmp_path / f"twin-{name}"
    shutil.copytree(path, twin)
    other = build_tiny_mlx(tmp_path / f"other-{name}", FAMILIES[name], seed=9)
    for draft in (twin, other):
        eng = draft_engine(path, draft)
        assert answer(eng, name, prompts, n=40)[0] == alone
        stats = eng.stats()["engine"]["batches"][name]["draft_model"]
        if name == "tiny-lfm2":
            continue
        assert stats["proposed"] > 0 and (stats["accepted"] == stats["proposed"]) == (draft is twin), stats


def assert_same_state(model, got: list, cold: list) -> None:
    """Two caches of the same tokens hold the same state: SSM / conv arrays, KV, a window's
    positions (in temporal order), and give the same next logits."""
    for c, w in zip(got, cold):
        assert type(c) is type(w) and getattr(c, "offset", None) == getattr(w, "offset", None)
        if isinstance(c, ArraysCache):
            for a, b in zip(c.state[0], w.state[0]):
                assert np.allclose(np.array(a), np.array(b), atol=1e-4)
        else:
            k = c._temporal_order(c.keys) if isinstance(c, RotatingKVCache) else c.keys[:, :, :c.offset]
            k2 = w._temporal_order(w.keys) if isinstance(w, RotatingKVCache) else w.keys[:, :, :w.offset]
            n = min(k.shape[2], k2.shape[2])
            assert np.allclose(np.array(k[:, :, -n:]), np.array(k2[:, :, -n:]), atol=1e-4)
    nxt = mx.array([[7, 8, 9]])
    assert np.allclose(np.array(model(nxt, cache=got)), np.array(model(nxt, cache=cold)), atol=1e-3)


def runner_path(eng, name, prompts) -> str:
    """The decode path a model's rows batch on (after a short batched run)."""
    from tests.unit.test_hybrid_prefix import answer

    answer(eng, name, prompts * 2, n=2)
    return eng.runners[name].batch.info()["path"]


@pytest.mark.parametrize("name", ["tiny-gemma3-text", "tiny-lfm2"])
def test_slot_batch_keeps_whole_states_for_resent_conversations(name, tmp_path):
    """With drafts on, windowed and hybrid models' rows batch in slots; their states are still kept
    whole (prompt end, answer end): a resent conversation (turn 1 + its answer + a new turn) sent
    beside another row restores the kept state and answers as a cold run does; a row handed over
    from the solo path mid-stream (rotating caches unrolled into rings, conv state copied into its
    slot) answers as alone."""
    from novamlx_worker.engine.engine import Engine
    from novamlx_worker.memory import MemoryEnforcer
    from protocol import messages as m
    from tests.fixtures.events import text_of
    from tests.unit.test_hybrid_prefix import answer

    path = build_tiny_mlx(tmp_path / name, FAMILIES[name], seed=5)

    def eng_with_cache():
        events = []
        eng = Engine(ModelPool([str(path)], [], "auto"), events.append, MemoryEnforcer("90%"), max_batch=8, ngram_k=4,
                     prefix_cache_bytes=64 << 20)
        eng.events = events
        return eng

    eng = eng_with_cache()
    a, b = PROMPT[:120], PROMPT[130:200]
    answer(eng, name, [a, b], n=24)
    runner = eng.runners[name]
    assert runner.batch.info()["path"] == "slots"
    kept = [t for t in runner.snapshots.entries if len(t) > len(a) and list(t[:len(a)]) == a]
    assert kept and any(len(t) == len(a) - 1 for t in runner.snapshots.entries), "prompt and answer states kept"
    turn2 = list(max(kept, key=len)) + [500, 501, 502, 503]
    warm, cached = answer(eng, name, [turn2, PROMPT[210:260]], n=24)
    assert cached[0] == len(max(kept, key=len)) and cached[1] == 0
    assert warm[0] == answer(engine(path, 4), name, [turn2], n=24)[0][0]
    # a lone row (solo path, its window wrapped) joined mid-stream by a second one
    solo_first = eng_with_cache()
    solo_first.handle(m.Generate("s", name, m.Sampling(temperature=0, max_tokens=40, ignore_eos=True),
                                 prompt_tokens=PROMPT[:200]))
    for _ in range(12):
        solo_first.step()
    assert solo_first.runners[name].solo is not None
    answer(solo_first, name, [PROMPT[20:80]], n=8)
    while "s" not in {e.id for e in solo_first.events if isinstance(e, m.Finished)}:
        solo_first.step()
    assert text_of(solo_first.events, "s") == generate_as(engine(path, 0), name, PROMPT[:200], 40)[0]
