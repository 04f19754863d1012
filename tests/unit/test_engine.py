"""The engine with a real tiny model, driven step by step (no gateway)."""
import pytest

from novamlx_worker.engine.engine import Engine
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool
from protocol import messages as m


@pytest.fixture(scope="module")
def engine(tiny_model):
    events = []
    pool = ModelPool([str(tiny_model)], [], "auto")
    pool.get("tiny-llama")
    eng = Engine(pool, events.append, MemoryEnforcer("90%"), max_batch=16, block_size=16)
    eng.events = events
    eng._model("tiny-llama")
    return eng


def pump(eng, steps=1):
    for _ in range(steps):
        eng._drain(block=False)
        eng._schedule()
        if any(r.active for r in eng.runners.values()):
            eng._step()


def run_alone(eng, rid, prompt, n):
    eng.inbox.put(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True),
                             prompt_tokens=prompt))
    while rid not in {e.id for e in eng.events if isinstance(e, m.Finished)}:
        pump(eng)
    return "".join(d.text for e in eng.events if isinstance(e, m.Step) for d in e.deltas if d.id == rid)


PREFIX = list(range(1000, 1100))


def test_thousand_aborted_requests_leave_nothing_referenced(engine):
    for wave in range(20):
        ids = [f"w{wave}-{i}" for i in range(50)]
        for i, rid in enumerate(ids):
            engine.inbox.put(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=50, ignore_eos=True),
                                        prompt_tokens=PREFIX + [i, wave]))
        pump(engine, steps=3)
        for rid in ids:
            engine.inbox.put(m.Abort(rid))
        pump(engine)
    pc = engine.caches["tiny-llama"]
    assert engine.counters["aborted"] == 1000
    assert pc.referenced == 0 and pc.stats.hits > 0  # the shared prefix was reused, then let go
    assert engine.kv_reserved == 0 and not engine.seqs and not engine.waiting
    assert engine.runners["tiny-llama"].active == 0


def test_cached_prefix_gives_the_cold_output(engine):
    prompt = list(range(2000, 2090))
    engine.caches["tiny-llama"].clear()
    cold = run_alone(engine, "cold", prompt, 30)
    hits = engine.caches["tiny-llama"].stats.hits
    warm = run_alone(engine, "warm", prompt, 30)
    assert engine.caches["tiny-llama"].stats.hits == hits + 1
    assert [e for e in engine.events if isinstance(e, m.Finished) and e.id == "warm"][0].usage.cached_tokens == 80
    assert warm == cold
