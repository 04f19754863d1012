"""Benchmark and perplexity runs as admin jobs, through the real server: results, progress,
cancelling mid-run, refusals; perplexity equal to mlx-lm's own eval_ppl on the same tokens."""
import time

import httpx
import mlx.core as mx
import pytest
from mlx_lm.perplexity import eval_ppl

from novamlx_worker.engine.perplexity import perplexity
from novamlx_worker.models.pool import ModelPool
from tests.conftest import Server

ADMIN = {"authorization": "Bearer adm"}
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "def add(a, b):\n    return a + b\n" * 8]


@pytest.fixture(scope="module")
def jserver(tiny_model, tmp_path_factory):
    s = Server(["--model", str(tiny_model), "--admin-key", "adm", "--embedding-model", "none"],
               tmp_path_factory.mktemp("jobs")).wait_ready()
    yield s
    s.stop()


def admin(s, path):
    return f"http://127.0.0.1:{s.admin_port}/admin/api/{path}"


def wait(s, kind, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = httpx.get(admin(s, f"{kind}/status"), headers=ADMIN).json()
        if st["state"] != "running":
            return st
        time.sleep(0.2)
    raise TimeoutError(st)


def reference_ppl(model, ids) -> float:
    return eval_ppl(model, mx.array([ids]), batch_size=1)[0]


def test_perplexity_job_equals_mlx_lm(jserver, tiny_model):
    r = httpx.post(admin(jserver, "ppl/start"), headers=ADMIN, json={"model": "tiny-llama", "texts": TEXTS})
    assert r.status_code == 202 and r.json()["state"] == "running"
    st = wait(jserver, "ppl")
    assert st["state"] == "done" and st["progress"] == {"done": 2, "total": 2}, st
    lm = ModelPool([str(tiny_model)], [], "auto").get("tiny-llama")
    for text, got in zip(TEXTS, st["results"]):
        ids = lm.tokenizer.encode(text)
        assert got["tokens"] == len(ids)
        assert got["perplexity"] == pytest.approx(reference_ppl(lm.model, ids), rel=1e-5)  # (a random model: ~vocab)
    assert st["summary"]["texts"] == 2 and st["summary"]["average_perplexity"] > 1
    r = httpx.post(admin(jserver, "ppl/start"), headers=ADMIN, json={"model": "tiny-llama"})  # the bundled sample
    assert r.status_code == 202 and wait(jserver, "ppl")["results"][0]["tokens"] > 100


def test_benchmark_job_reports_every_figure_and_cancels_cleanly(jserver):
    r = httpx.post(admin(jserver, "bench/start"), headers=ADMIN,
                   json={"model": "tiny-llama", "prompt_lengths": [32, 128], "max_tokens": 8})
    assert r.status_code == 202
    st = wait(jserver, "bench")
    assert st["state"] == "done" and len(st["results"]) == 2, st
    for res, n in zip(st["results"], (32, 128)):
        assert res["prompt_tokens"] == n and res["generated_tokens"] == 8
        for key in ("ttft_ms", "prefill_tokens_per_s", "generation_tokens_per_s", "end_to_end_s", "peak_memory_gb"):
            assert res[key] is not None and res[key] > 0, (key, res)
    # a long run, cancelled mid-way: the job says so, the worker stops, the server keeps serving
    r = httpx.post(admin(jserver, "bench/start"), headers=ADMIN,
                   json={"model": "tiny-llama", "prompt_lengths": [16] * 10, "max_tokens": 480})  # context 512
    assert r.status_code == 202
    assert httpx.post(admin(jserver, "bench/start"), headers=ADMIN,
                      json={"model": "tiny-llama"}).status_code == 409  # one at a time
    time.sleep(1.0)
    assert httpx.post(admin(jserver, "bench/cancel"), headers=ADMIN).json()["state"] == "cancelling"
    st = wait(jserver, "bench", 30)
    assert st["state"] == "cancelled" and st["progress"]["done"] < 10
    deadline = time.time() + 20
    while jserver.stats()["engine"].get("running", 0) and time.time() < deadline:
        time.sleep(0.3)
    assert not jserver.stats()["engine"].get("running", 0)
    out = jserver.openai().chat.completions.create(model="tiny-llama", max_tokens=3,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].finish_reason in ("stop", "length")
    assert httpx.post(admin(jserver, "bench/cancel"), headers=ADMIN).status_code == 409


@pytest.mark.parametrize("path,body,status,param", [
    ("bench/start", {"model": "nope"}, 404, "model"),
    ("bench/start", {"model": "tiny-llama", "prompt_lengths": [0]}, 400, "prompt_lengths"),
    ("bench/start", {"model": "tiny-llama", "max_tokens": "many"}, 400, "max_tokens"),
    ("ppl/start", {"model": "tiny-llama", "texts": ["", "x"]}, 400, "texts"),
    ("ppl/start", {"texts": ["x"]}, 400, "model"),
])
def test_job_refusals(jserver, path, body, status, param):
    r = httpx.post(admin(jserver, path), headers=ADMIN, json=body)
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_perplexity_of_the_default_model_equals_mlx_lm():
    """The embedded default model (real weights), a fixed text: ours vs mlx-lm's eval_ppl."""
    from novamlx_gateway.admin.jobs import SAMPLE
    from protocol.naming import default_model_path

    pool = ModelPool([default_model_path()], [], "auto")
    lm = pool.get(next(iter(pool.entries)))
    ids = lm.tokenizer.encode(SAMPLE.read_text())
    ours = perplexity(lm.model, ids, chunk=128)
    assert ours == pytest.approx(reference_ppl(lm.model, ids), abs=1e-3)
    assert 1 < ours < 100  # a real model reads English
