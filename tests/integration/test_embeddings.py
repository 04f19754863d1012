"""Embeddings and rerank through the real server: the official openai SDK and httpx."""
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

REFERENCE = json.loads((Path(__file__).parent.parent / "fixtures" / "minilm_reference.json").read_text())
EMB = "all-minilm-l6-v2"


def test_listed_beside_the_llm(server, client):
    ids = {m.id for m in client.models.list().data}
    assert EMB in ids and "tiny-llama" in ids


def test_float_and_base64_match_reference(server, client):
    sents = REFERENCE["sentences"]
    ref = np.array(REFERENCE["embeddings"])
    as_float = client.embeddings.create(model=EMB, input=sents, encoding_format="float")
    # The SDK asks for base64 and decodes it; its strict mode types the wire's base64 string as floats.
    as_b64 = server.openai(strict=False).embeddings.create(model=EMB, input=sents)
    a = np.array([d.embedding for d in as_float.data])
    b = np.array([d.embedding for d in as_b64.data])
    assert a.shape == (len(sents), 384) and np.allclose(a, b, atol=1e-6)
    cos_dist = 1 - (a * ref).sum(-1)
    assert cos_dist.max() < 1e-4, cos_dist
    assert [d.index for d in as_float.data] == list(range(len(sents)))
    assert as_float.usage.prompt_tokens > len(sents) * 3


def test_single_string_and_token_input(client):
    one = client.embeddings.create(model=EMB, input="A cat sits on the mat.", encoding_format="float")
    ids = client.embeddings.create(model=EMB, input=[[101, 1037, 4937, 102]], encoding_format="float")
    assert len(one.data) == 1 and len(ids.data[0].embedding) == 384
    assert abs(np.linalg.norm(one.data[0].embedding) - 1) < 1e-4


def test_dimensions_and_bad_inputs(server):
    client = server.openai(strict=False)  # the SDK's default base64 is a string on the wire
    assert len(client.embeddings.create(model=EMB, input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMB, input="x", dimensions=128)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMB, input=["ok", ""])
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMB, input="word " * 700)
    assert "maximum" in e.value.message
    long = client.embeddings.create(model=EMB, input="word " * 700, extra_body={"truncate": True})
    assert len(long.data) == 1
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny-llama", input="x")  # not an embedding model
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=EMB, messages=[{"role": "user", "content": "x"}])


def test_rerank_shapes_and_order(server):
    docs = ["Stock prices fell.", {"text": "A kitten is sitting."}, "The weather is cold."]
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        r = httpx.post(server.base_url + path, headers=server.headers, json={
            "model": EMB, "query": "A cat sits.", "documents": docs, "top_n": 2, "return_documents": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["index"] for x in body["results"]] == [1, 0] or body["results"][0]["index"] == 1
        assert len(body["results"]) == 2 and body["results"][0]["document"]["text"] == "A kitten is sitting."
        scores = [x["relevance_score"] for x in body["results"]]
        assert scores == sorted(scores, reverse=True)
    r = httpx.post(server.base_url + "/v1/rerank", headers=server.headers, json={
        "query": "A cat sits.", "documents": docs, "top_n": 99, "normalize": "minmax"}).json()
    assert len(r["results"]) == 3 and r["results"][0]["relevance_score"] == 1.0 and r["results"][-1]["relevance_score"] == 0.0


@pytest.mark.parametrize("body", [
    {"query": "q", "documents": []}, {"query": "q", "documents": [""]}, {"query": "q", "documents": [3]},
    {"query": "", "documents": ["a"]}, {"query": "q"},
])
def test_rerank_bad_input(server, body):
    r = httpx.post(server.base_url + "/v1/rerank", headers=server.headers, json=body)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_raw_base64_wire(server):
    r = httpx.post(server.base_url + "/v1/embeddings", headers=server.headers,
                   json={"model": EMB, "input": "A cat sits on the mat.", "encoding_format": "base64"}).json()
    vec = np.frombuffer(__import__("base64").b64decode(r["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,) and np.allclose(vec, REFERENCE["embeddings"][0], atol=1e-4)


def test_cross_encoder_scores_match_reference(tiny_model, tmp_path):
    from tests.conftest import Server
    from tests.fixtures.tiny_models import build_tiny_cross_encoder

    ref = json.loads((Path(__file__).parent.parent / "fixtures" / "cross_encoder_reference.json").read_text())
    ce = build_tiny_cross_encoder(tmp_path / "tiny-cross-encoder")
    s = Server(["--model", str(tiny_model), "--embedding-model", str(ce)], tmp_path / "data", keys=()).wait_ready()
    try:
        r = httpx.post(s.base_url + "/v1/rerank", json={"query": ref["query"], "documents": ref["documents"]}).json()
        assert r["model"] == "tiny-cross-encoder" and r["method"] == "cross-encoder"
        got = {x["index"]: x["relevance_score"] for x in r["results"]}
        assert np.allclose([got[i] for i in range(len(ref["scores"]))], ref["scores"], atol=1e-4)
        assert [x["index"] for x in r["results"]] == sorted(range(4), key=lambda i: -ref["scores"][i])
    finally:
        s.stop()
