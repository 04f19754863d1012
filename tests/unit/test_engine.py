"""The engine with a real tiny model, driven step by step (no gateway)."""
import pytest

from novamlx_worker.engine import budget
from novamlx_worker.engine.engine import Engine
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool
from protocol import messages as m
from tests.fixtures.events import text_of


@pytest.fixture(scope="module")
def engine(tiny_model):
    events = []
    pool = ModelPool([str(tiny_model)], [], "auto")
    pool.get("tiny-llama")
    eng = Engine(pool, events.append, MemoryEnforcer("90%"), max_batch=16, block_size=16)
    eng.events = events
    eng.models.get("tiny-llama")
    return eng


def pump(eng, steps=1):
    for _ in range(steps):
        while not eng.inbox.empty():
            eng.handle(eng.inbox.get_nowait())
        eng.step()


def run_alone(eng, rid, prompt, n):
    eng.inbox.put(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True),
                             prompt_tokens=prompt))
    while rid not in {e.id for e in eng.events if isinstance(e, m.Finished)}:
        pump(eng)
    return text_of(eng.events, rid)


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
    assert engine.scheduler.kv_reserved == 0 and not engine.seqs and not engine.scheduler.waiting
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
    assert text_of(engine.events, "a") == alone and text_of(engine.events, "b") == b_alone
    fin = {e.id: e for e in engine.events if isinstance(e, m.Finished)}
    assert fin["a"].usage.completion_tokens == 40 and fin["b"].usage.completion_tokens == 20


def test_kv_cost_counts_slot_padding(engine):
    """Admission prices a batch as its slot buffers: slots (a power of two) x the longest row."""
    from novamlx_worker.engine.scheduler import Item

    rows = [Item(f"r{i}", 0, 0.0, kv, "tiny-llama") for i, kv in enumerate((10, 10, 100))]
    assert budget.kv_cost(rows, engine.runners) == 4 * 100  # 3 rows take 4 slots, each sized for the 100
    assert budget.kv_cost(rows[:2], engine.runners) == 2 * 10
    assert budget.kv_cost([Item("x", 0, 0.0, 7, "elsewhere")], engine.runners) == 7  # no slot batch: its own KV


def _finished(eng, rid):
    return next((e for e in eng.events if isinstance(e, (m.Finished, m.Error)) and e.id == rid), None)


def _run_until(eng, rids, limit=2000):
    for _ in range(limit):
        if all(_finished_any(eng, r) is not None for r in rids):
            return
        pump(eng)
    raise AssertionError(f"not finished: {[r for r in rids if _finished_any(eng, r) is None]}")


def test_a_failing_batch_step_fails_its_rows_and_the_engine_serves_on(engine):
    """The forward of a model's batch raises: its rows end with an error event, nothing stays
    reserved, and a fresh runner serves the next requests."""
    for rid in ("boom-1", "boom-2"):
        engine.inbox.put(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=30, ignore_eos=True),
                                    prompt_tokens=list(range(500, 520))))
    pump(engine, steps=2)
    runner = engine.runners["tiny-llama"]

    def broken():
        raise RuntimeError("device lost")

    runner.step = broken
    _run_until(engine, ["boom-1", "boom-2"])
    for rid in ("boom-1", "boom-2"):
        err = _finished(engine, rid)
        assert isinstance(err, m.Error) and err.kind == "internal_error" and "device lost" in err.message
    assert engine.runners["tiny-llama"] is not runner
    assert engine.scheduler.kv_reserved == 0 and not engine.seqs and engine.caches["tiny-llama"].referenced == 0
    assert run_alone(engine, "after-boom", list(range(600, 620)), 5)


def test_an_exception_in_one_sequence_fails_only_that_sequence(engine):
    engine.fault.kind, engine.fault.marker = "raise_on_text", "RAISE-HERE"
    try:
        msgs = lambda text: [m.ChatMessage("user", text)]  # noqa: E731
        engine.inbox.put(m.Generate("ok-1", "tiny-llama", m.Sampling(temperature=0, max_tokens=20, ignore_eos=True),
                                    messages=msgs("hello")))
        engine.inbox.put(m.Generate("bad-1", "tiny-llama", m.Sampling(temperature=0, max_tokens=20, ignore_eos=True),
                                    messages=msgs("RAISE-HERE")))
        engine.inbox.put(m.Generate("ok-2", "tiny-llama", m.Sampling(temperature=0, max_tokens=20, ignore_eos=True),
                                    messages=msgs("there")))
        _run_until(engine, ["ok-1", "bad-1", "ok-2"])
    finally:
        engine.fault.kind, engine.fault.marker = None, None
    assert isinstance(_finished(engine, "bad-1"), m.Error)
    for rid in ("ok-1", "ok-2"):
        fin = _finished(engine, rid)
        assert isinstance(fin, m.Finished) and fin.usage.completion_tokens == 20
    assert engine.scheduler.kv_reserved == 0 and not engine.seqs


def test_long_embedding_work_runs_between_decode_steps(engine):
    """A 640-input embedding request is cut into batches: a stream decodes while it runs,
    and an abort drops the rest of the work."""
    from novamlx_worker.models.embedder import load_embedder
    from protocol.naming import default_embedding_path

    path = default_embedding_path()
    if path is None:
        pytest.skip("the MiniLM wheel is not installed")
    emb = load_embedder(path, "minilm")
    engine.models.embedders["minilm"] = emb
    texts = [f"document number {i} about nothing in particular" for i in range(640)]
    engine.inbox.put(m.Embed("emb-long", "minilm", texts))
    engine.inbox.put(m.Generate("beside", "tiny-llama", m.Sampling(temperature=0, max_tokens=12, ignore_eos=True),
                                prompt_tokens=list(range(700, 720))))
    tokens_before, turns = engine.tokens_out, 0
    while _finished_any(engine, "emb-long") is None and turns < 500:
        pump(engine)
        turns += 1
    assert turns > 10 and engine.tokens_out - tokens_before >= 10  # the stream decoded while the work ran
    _run_until(engine, ["beside"])
    vecs = _finished_any(engine, "emb-long")
    assert len(vecs.vectors) == 640 and len(vecs.vectors[0]) == emb.dims
    engine.inbox.put(m.Embed("emb-aborted", "minilm", texts))
    pump(engine, steps=2)
    engine.inbox.put(m.Abort("emb-aborted"))
    pump(engine, steps=3)
    assert not engine.jobs and _finished_any(engine, "emb-aborted") is None


def _finished_any(eng, rid):
    """The request's answer: its Finished, Error, Embeddings or Scores."""
    return next((e for e in eng.events if getattr(e, "id", None) == rid and not isinstance(e, (m.Step, m.Started))),
                None)
