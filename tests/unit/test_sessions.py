"""Sessions in the engine (no process): a 5-turn conversation kept in a session answers as
without one and restores every earlier turn even with the prefix cache off; save/restore,
fork, expiry, capacity, and a session refused for another model."""
import time

import pytest

from novamlx_worker.engine.engine import Engine
from novamlx_worker.engine.sessions import Sessions
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool
from protocol import messages as m
from tests.fixtures.events import tokens_of


def engine(path, folder=None, capacity=64, ttl=1800.0):
    events = []
    eng = Engine(ModelPool([str(path)], [], "auto"), events.append, MemoryEnforcer("90%"), max_batch=8,
                 prefix_cache_bytes=0, sessions=Sessions(folder, capacity, ttl))
    eng.events = events
    return eng


def turn(eng, prompt, session=None, n=12):
    rid = f"t{len(eng.events)}"
    eng.handle(m.Generate(rid, "tiny-llama", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True, logprobs=True),
                          prompt_tokens=prompt, session=session))
    while not any(isinstance(e, (m.Finished, m.Error)) and e.id == rid for e in eng.events):
        eng.step()
    fin = next(e for e in eng.events if getattr(e, "id", None) == rid and isinstance(e, (m.Finished, m.Error)))
    assert isinstance(fin, m.Finished), fin
    return tokens_of(eng.events, rid), fin.usage.cached_tokens


def conversation(eng, session):
    """5 turns: each prompt is the previous prompt + a fixed 'answer' + a new user turn."""
    prompt, out = list(range(200, 260)), []
    for i in range(5):
        texts, cached = turn(eng, prompt, session)
        out.append((texts, cached))
        prompt = prompt + [300 + i] * 6 + list(range(400 + 10 * i, 408 + 10 * i))
    return out


def test_five_turns_in_a_session_equal_the_same_without_and_restore_every_turn(tiny_model):
    plain = conversation(engine(tiny_model), None)
    kept = conversation(engine(tiny_model), "chat-1")
    assert [t for t, _ in kept] == [t for t, _ in plain]
    assert [c for _, c in plain] == [0] * 5  # the prefix cache is off here
    assert kept[0][1] == 0 and all(c >= 60 for _, c in kept[1:])  # every later turn restored the session


def test_save_restore_fork_delete(tiny_model, tmp_path):
    eng = engine(tiny_model, tmp_path / "sessions")
    prompt = list(range(500, 580))
    first, _ = turn(eng, prompt, "s1")
    info = eng.sessions.command(m.SessionOp("x", "save", "s1"))
    assert info["saved"] and (tmp_path / "sessions" / "s1.safetensors").exists()
    # a fresh engine (a restarted worker) restores it and continues as the first one would
    nxt = prompt + [7, 8, 9]
    want, _ = turn(eng, nxt, "s1")
    fresh = engine(tiny_model, tmp_path / "sessions")
    assert fresh.sessions.command(m.SessionOp("y", "restore", "s1", model="tiny-llama"))["tokens"] >= 80
    got, cached = turn(fresh, nxt, "s1")
    assert got == want and cached >= 80
    # fork: two continuations from one state, neither touching the other
    fresh.sessions.command(m.SessionOp("z", "fork", "s1", new_session="s2"))
    a, ca = turn(fresh, nxt + [11, 12], "s1")
    b, cb = turn(fresh, nxt + [13, 14], "s2")
    assert ca > 0 and cb > 0
    listed = {s["id"] for s in fresh.sessions.command(m.SessionOp("l", "list"))["sessions"]}
    assert {"s1", "s2"} <= listed
    fresh.sessions.command(m.SessionOp("d", "delete", "s2"))
    assert "s2" not in {s["id"] for s in fresh.sessions.list()}


def test_restore_refuses_another_models_session(tiny_model, tmp_path):
    from novamlx_worker.engine.errors import RequestError

    eng = engine(tiny_model, tmp_path / "sessions")
    turn(eng, list(range(600, 650)), "mine")
    eng.sessions.command(m.SessionOp("s", "save", "mine"))
    with pytest.raises(RequestError, match="belongs to model"):
        eng.sessions.command(m.SessionOp("r", "restore", "mine", model="another-model"))


def test_capacity_evicts_the_oldest_idle_and_ttl_expires(tiny_model):
    eng = engine(tiny_model, capacity=2, ttl=0.5)
    for sid in ("a", "b", "c"):
        turn(eng, list(range(700, 720)) + [ord(sid)], sid)
    assert {s["id"] for s in eng.sessions.list()} == {"b", "c"} and eng.sessions.evicted == 1
    time.sleep(0.6)
    eng.sessions.expire()
    assert eng.sessions.list() == []


def test_sessions_count_in_admission_and_go_first_under_pressure(tiny_model, tmp_path):
    """A kept state's bytes come off the KV budget; memory pressure drops it first, saved, and the
    next turn of that session restores it from disk by itself."""
    from novamlx_worker.pressure import Pressure

    eng = engine(tiny_model, tmp_path / "sessions")
    eng.models.get("tiny-llama")  # weights loaded: the budget moves only with sessions now
    before = eng.kv_budget()
    prompt = list(range(800, 880))
    first, _ = turn(eng, prompt, "p1")
    assert eng.sessions.bytes > 0 and eng.kv_budget() == before - eng.sessions.bytes
    pressure = Pressure(level=lambda: "warning")
    pressure.relieve(pressure.poll(), eng.models, set, eng.memory.limit, eng.sessions)
    assert eng.sessions.list() == [] and eng.sessions.dropped == 1
    assert (tmp_path / "sessions" / "p1.safetensors").exists()
    assert any(a["action"] == "session dropped from memory" for a in pressure.state()["actions"])
    nxt, cached = turn(eng, prompt + [5, 6, 7], "p1")
    assert cached >= 80  # restored from disk on demand


@pytest.mark.parametrize("kind", ["quantized", "hybrid"])
def test_other_cache_kinds_save_restore_and_continue(tmp_path, kind):
    """Quantized KV (kv_bits 8, stored quantized) and a hybrid model (lfm2: convolution state +
    attention) keep, save and restore their sessions, and the restored turn equals the live one."""
    from tests.fixtures.tiny_models import TINY_LFM2, TINY_LLAMA, build_tiny_llama, build_tiny_mlx

    if kind == "quantized":
        path = build_tiny_llama(tmp_path / "m" / "tiny-wide", seed=3, cfg={**TINY_LLAMA, "hidden_size": 128,
                                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64})
        extra = {"kv": (8, 64)}
    else:
        path = build_tiny_mlx(tmp_path / "m" / "tiny-lfm2", TINY_LFM2, seed=5)
        extra = {}
    name = path.name

    def make():
        events = []
        eng = Engine(ModelPool([str(path)], [], "auto"), events.append, MemoryEnforcer("90%"), max_batch=8,
                     prefix_cache_bytes=0, sessions=Sessions(str(tmp_path / "s"), 64, 1800.0), **extra)
        eng.events = events
        return eng

    def say(eng, prompt):
        rid = f"r{len(eng.events)}"
        eng.handle(m.Generate(rid, name, m.Sampling(temperature=0, max_tokens=8, ignore_eos=True, logprobs=True),
                              prompt_tokens=prompt, session="k"))
        while not any(isinstance(e, m.Finished) and e.id == rid for e in eng.events):
            eng.step()
        fin = next(e for e in eng.events if isinstance(e, m.Finished) and e.id == rid)
        return tokens_of(eng.events, rid), fin.usage.cached_tokens

    eng = make()
    say(eng, list(range(900, 960)))
    held = eng.sessions.items["k"].tokens
    if kind == "quantized":
        assert type(eng.sessions.items["k"].cache[0]).__name__.endswith("QuantizedKVCache")
    eng.sessions.save("k")
    nxt = list(held) + [11, 12, 13]
    live, cached = say(eng, nxt)
    assert cached == len(held)
    fresh = make()
    again, cached = say(fresh, nxt)  # restored from disk on demand
    assert cached == len(held) and again == live
