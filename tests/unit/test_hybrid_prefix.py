"""Prefix reuse and batching for models whose caches are not plain KV: gemma3_text (sliding
window + global layers) and lfm2 (short-convolution state + attention), tiny random models.
A resent conversation restores the kept state (cached tokens) and answers as a cold run does."""
import pytest

from novamlx_worker.engine.engine import Engine
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool
from protocol import messages as m
from tests.fixtures.events import tokens_of
from tests.fixtures.tiny_models import TINY_GEMMA3, TINY_LFM2, build_tiny_mlx

FAMILIES = {"tiny-gemma3-text": TINY_GEMMA3, "tiny-lfm2": TINY_LFM2}
PROMPT = [(i * 37 + 11) % 40000 + 100 for i in range(300)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    return name, build_tiny_mlx(tmp_path_factory.mktemp("hybrid") / name, FAMILIES[name], seed=5)


def engine(path):
    events = []
    eng = Engine(ModelPool([str(path)], [], "auto"), events.append, MemoryEnforcer("90%"), max_batch=8)
    eng.events = events
    return eng


def answer(eng, model, prompts, n=16):
    """Greedy answers (token ids) and cached_tokens, all requests submitted together."""
    rids = [f"q{len(eng.events)}-{i}" for i in range(len(prompts))]
    for rid, p in zip(rids, prompts):
        eng.handle(m.Generate(rid, model, m.Sampling(temperature=0, max_tokens=n, ignore_eos=True, logprobs=True),
                              prompt_tokens=p))

    def done():
        return {e.id: e for e in eng.events if isinstance(e, (m.Finished, m.Error)) and e.id in rids}

    while len(done()) < len(rids):
        eng.step()
    fin = done()
    assert all(isinstance(fin[r], m.Finished) for r in rids), fin
    return [tokens_of(eng.events, r) for r in rids], [fin[r].usage.cached_tokens for r in rids]


def test_resent_prompt_restores_the_kept_state_and_answers_as_cold(family):
    name, path = family
    cold, cached = answer(engine(path), name, [PROMPT])
    assert cached == [0]
    eng = engine(path)
    first, _ = answer(eng, name, [PROMPT])
    again, cached = answer(eng, name, [PROMPT])
    assert first == cold and again == cold
    assert cached == [len(PROMPT) - 1]  # all but the last prompt token, which decoding feeds


def test_resent_conversation_reuses_prompt_and_answer(family):
    """Turn 2 = turn 1's prompt + its answer + a new user turn: the state kept at the end of the
    answer is restored; the answer equals a cold run of turn 2."""
    name, path = family
    eng = engine(path)
    answer(eng, name, [PROMPT])
    runner = eng.runners[name]
    answer_ids = [t for t in runner.snapshots.entries if len(t) > len(PROMPT)]
    assert answer_ids, "the finished answer's state was kept"
    turn2 = list(answer_ids[0]) + [500, 501, 502, 503]
    warm, cached = answer(eng, name, [turn2])
    assert cached[0] == len(answer_ids[0])
    cold, _ = answer(engine(path), name, [turn2])
    assert warm == cold


def test_rows_batched_equal_each_alone(family):
    name, path = family
    prompts = [PROMPT[:120], PROMPT[50:250], PROMPT[10:60]]
    together, _ = answer(engine(path), name, prompts)
    alone = [answer(engine(path), name, [p])[0][0] for p in prompts]
    assert together == alone


def test_lone_row_decodes_on_the_solo_path_and_hands_over_to_the_batch(family):
    """One sequence runs on the generate_step-style solo path (as fast as stream_generate); a
    second one arriving mid-stream moves it, window/SSM state and all, into the BatchGenerator
    (drafting windowed models batch in the slot batch: test_rollback.py)."""
    name, path = family
    a, b = PROMPT[:90], PROMPT[100:160]
    alone_a, alone_b = (answer(engine(path), name, [p], n=24)[0][0] for p in (a, b))
    eng = engine(path)
    eng.handle(m.Generate("a", name, m.Sampling(temperature=0, max_tokens=24, ignore_eos=True, logprobs=True),
                          prompt_tokens=a))
    for _ in range(6):
        eng.step()
    assert eng.runners[name].solo is not None
    got_b, _ = answer(eng, name, [b], n=24)
    assert eng.runners[name].solo is None
    while "a" not in {e.id for e in eng.events if isinstance(e, m.Finished)}:
        eng.step()
    got_a = tokens_of(eng.events, "a")
    assert got_a == alone_a and got_b[0] == alone_b
