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


def test_solo_to_batch_handover_keeps_the_output(engine):
    """A lone sequence decodes on the fast path; a second one moves it into the batch mid-stream."""
    a_prompt, b_prompt = list(range(3000, 3040)), list(range(4000, 4030))
    alone = run_alone(engine, "a-alone", a_prompt, 40)
    b_alone = run_alone(engine, "b-alone", b_prompt, 20)
    engine.inbox.put(m.Generate("a", "tiny-llama", m.Sampling(temperature=0, max_tokens=40, ignore_eos=True),
                                prompt_tokens=a_prompt))
    pump(engine, steps=8)
    runner = engine.runners["tiny-llama"]
    assert runner.solo is not None  # alone: the fast path
    engine.inbox.put(m.Generate("b", "tiny-llama", m.Sampling(temperature=0, max_tokens=20, ignore_eos=True),
                                prompt_tokens=b_prompt))
    import time

    deadline = time.monotonic() + 5
    while runner.solo is not None and time.monotonic() < deadline:  # admission gathers arrivals for a few ms
        pump(engine)
    assert runner.solo is None and runner.active == 2  # both in the batch now
    while not {"a", "b"} <= {e.id for e in engine.events if isinstance(e, m.Finished)}:
        pump(engine)
    text = lambda rid: "".join(d.text for e in engine.events if isinstance(e, m.Step) for d in e.deltas if d.id == rid)  # noqa: E731
    assert text("a") == alone and text("b") == b_alone
    fin = {e.id: e for e in engine.events if isinstance(e, m.Finished)}
    assert fin["a"].usage.completion_tokens == 40 and fin["b"].usage.completion_tokens == 20


def test_kv_cost_counts_slot_padding(engine):
    """Admission prices a batch as its slot buffers: slots (a power of two) x the longest row."""
    from novamlx_worker.engine.scheduler import Item

    rows = [Item(f"r{i}", 0, 0.0, kv, "tiny-llama") for i, kv in enumerate((10, 10, 100))]
    assert engine._kv_cost(rows) == 4 * 100  # 3 rows take 4 slots, each sized for the 100
    assert engine._kv_cost(rows[:2]) == 2 * 10
    assert engine._kv_cost([Item("x", 0, 0.0, 7, "elsewhere")]) == 7  # no slot batch: its own KV
