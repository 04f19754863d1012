"""Embedding families beyond BERT through the real server and the OpenAI SDK: XLM-RoBERTa with CLS
pooling (as BGE-M3), ModernBERT with mean pooling and query/document prompts (as nomic's), both
against vectors PyTorch transformers computed for the same tiny random weights; a family nothing
here runs is listed and refuses with a 400 that names it."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import Server
from tests.fixtures.tiny_embedders import build_tiny_modernbert, build_tiny_unsupported, build_tiny_xlmr

REF = json.loads((Path(__file__).parent.parent / "fixtures" / "embedding_families_reference.json").read_text())


@pytest.fixture(scope="module")
def fam(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb-families")
    folders = [build_tiny_xlmr(root / "tiny-xlmr"), build_tiny_modernbert(root / "tiny-modernbert"),
               build_tiny_unsupported(root / "tiny-nomic")]
    args = ["--model", str(tiny_model)] + [a for f in folders for a in ("--embedding-model", str(f))]
    s = Server(args, tmp_path_factory.mktemp("emb-families-data")).wait_ready()
    yield s
    s.stop()


def vectors(s, model, texts, **extra):
    r = s.openai().embeddings.create(model=model, input=texts, encoding_format="float", extra_body=extra or None)
    return np.array([d.embedding for d in r.data])


@pytest.mark.parametrize("model,case", [("tiny-xlmr", "xlmr"), ("tiny-modernbert", "modernbert"),
                                        ("tiny-modernbert", "modernbert_query")])
def test_vectors_equal_the_reference(fam, model, case):
    want = REF["cases"][case]
    extra = {"input_type": want["input_type"]} if want["input_type"] else {}
    got = vectors(fam, model, REF["sentences"], **extra)
    dist = 1 - (got * np.array(want["embeddings"])).sum(axis=1)
    assert dist.max() < 1e-4, (case, dist)


def test_prompts_change_the_vector_and_unknown_ones_are_refused(fam):
    plain, query = vectors(fam, "tiny-modernbert", ["tides"]), vectors(fam, "tiny-modernbert", ["tides"], input_type="query")
    assert float(plain[0] @ query[0]) < 0.9999
    with pytest.raises(openai.BadRequestError) as e:
        vectors(fam, "tiny-modernbert", ["tides"], input_type="classification")
    assert "document, query" in e.value.message and e.value.body["param"] == "input_type"
    with pytest.raises(openai.BadRequestError) as e:
        vectors(fam, "tiny-xlmr", ["tides"], input_type="query")  # a model without prompts
    assert "its prompts: none" in e.value.message


def test_bi_encoder_rerank_uses_the_query_and_document_prompts(fam):
    docs = ["lighthouse keepers", "stock prices", "tidal charts"]
    r = httpx.post(fam.base_url + "/v1/rerank", headers=fam.headers,
                   json={"model": "tiny-modernbert", "query": "the sea", "documents": docs}).json()
    q = vectors(fam, "tiny-modernbert", ["the sea"], input_type="query")[0]
    d = vectors(fam, "tiny-modernbert", docs, input_type="document")
    want = sorted(range(3), key=lambda i: -float(d[i] @ q))
    assert [x["index"] for x in r["results"]] == want
    assert all(abs(x["relevance_score"] - float(d[x["index"]] @ q)) < 1e-4 for x in r["results"])


def test_an_unsupported_family_is_listed_and_refused_by_name(fam):
    assert "tiny-nomic" in {m.id for m in fam.openai().models.list().data}
    with pytest.raises(openai.BadRequestError) as e:
        vectors(fam, "tiny-nomic", ["hello"])
    assert "'nomic_bert'" in e.value.message and "cannot run" in e.value.message
    r = httpx.post(fam.base_url + "/v1/rerank", headers=fam.headers,
                   json={"model": "tiny-nomic", "query": "q", "documents": ["d"]})
    assert r.status_code == 400 and "nomic_bert" in r.text
    assert fam.health()["worker"]["restarts"] == 0
