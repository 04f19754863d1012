"""Several requests to one vision-language model decode in one batched forward (engine/vision_batch.py),
driven through Engine.handle()/step() with no process: each row's answer equals its answer alone,
and the rows share forwards."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from novamlx_worker.engine.engine import Engine
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool
from protocol import messages as m
from tests.fixtures.events import text_of
from tests.fixtures.tiny_vlms import build_tiny_gemma3, build_tiny_qwen2_vl

N = 20
QUESTIONS = ["What is in this picture?", "Describe the colours.", "Count the shapes.", "Is it a cat?"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vb-images")
    refs = []
    for i in range(2):
        pixels = (np.random.default_rng(10 + i).random((56, 70, 3)) * 255).astype("uint8")
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        refs.append(m.ImageRef(hashlib.sha256(path.read_bytes()).hexdigest(), str(path)))
    return refs


@pytest.fixture(scope="module", params=["qwen2_vl", "gemma3"])
def engine(request, tmp_path_factory):
    build = build_tiny_qwen2_vl if request.param == "qwen2_vl" else build_tiny_gemma3
    folder = build(tmp_path_factory.mktemp("vb") / f"tiny-{request.param}")
    pool = ModelPool([str(folder)], [], "auto")
    events = []
    eng = Engine(pool, events.append, MemoryEnforcer("90%"), max_batch=8)
    eng.events, eng.model_id = events, folder.name
    eng.models.get(folder.name)
    return eng


def ask(eng, rid: str, i: int, images, temperature: float = 0.0, seed: int | None = None) -> None:
    parts = [m.Part("image", image=images[i % 2]), m.Part("text", text=QUESTIONS[i])]
    eng.handle(m.Generate(rid, eng.model_id, m.Sampling(temperature=temperature, max_tokens=N - i, ignore_eos=True,
                                                       seed=seed),
                          messages=[m.ChatMessage("user", content=QUESTIONS[i], parts=parts)]))


def drain(eng, ids: set[str]) -> dict[str, str]:
    while not ids <= {e.id for e in eng.events if isinstance(e, m.Finished)}:
        eng.step()
    return {rid: text_of(eng.events, rid) for rid in ids}


def forwards(eng) -> int:
    return eng.runners[eng.model_id].forwards


def test_rows_batched_equal_each_alone(engine, images):
    alone = {}
    before = forwards(engine)
    for i in range(4):
        ask(engine, f"alone{i}", i, images)
        alone[i] = drain(engine, {f"alone{i}"})[f"alone{i}"]
    sequential = forwards(engine) - before
    assert sequential == sum(N - i - 1 for i in range(4))  # the first token of each comes from its prefill

    before = forwards(engine)
    for i in range(4):
        ask(engine, f"together{i}", i, images)
    together = drain(engine, {f"together{i}" for i in range(4)})
    assert [together[f"together{i}"] for i in range(4)] == [alone[i] for i in range(4)]
    assert len(set(alone.values())) > 1
    # one prompt joins per step, so four rows share all but their first few forwards
    assert forwards(engine) - before <= N - 1 + 3
    runner = engine.runners[engine.model_id]
    assert runner.active == 0 and runner.cache is None


def test_seeded_sampled_rows_and_an_abort_mid_batch(engine, images):
    alone = {}
    for i in range(3):
        ask(engine, f"s-alone{i}", i, images, temperature=0.8, seed=7 + i)
        alone[i] = drain(engine, {f"s-alone{i}"})[f"s-alone{i}"]
    for i in range(4):
        ask(engine, f"s{i}", i, images, temperature=0.8 if i < 3 else 0.0, seed=7 + i if i < 3 else None)
    for _ in range(5):
        engine.step()
    engine.handle(m.Abort("s3"))
    got = drain(engine, {f"s{i}" for i in range(3)})
    assert [got[f"s{i}"] for i in range(3)] == [alone[i] for i in range(3)]
    assert engine.runners[engine.model_id].active == 0
