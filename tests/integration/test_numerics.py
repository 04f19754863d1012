"""Our served numbers equal mlx-lm's on the same weights."""

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generate_step
from mlx_lm.utils import load as mlx_lm_load

from novamlx_worker.models.gguf import load_gguf
from novamlx_worker.models.loader import default_model_path

PROMPT = "The quick brown fox jumps over the lazy dog because"


def test_tiny_model_logprobs_match_mlx_lm(server, tiny_model):
    """Prompt logprobs (echo) and greedy continuation from the server vs mlx-lm directly."""
    client = server.openai(strict=False)  # OpenAI's wire: the echoed first token's logprob is null
    model, tok = mlx_lm_load(str(tiny_model))
    ids = tok.encode(PROMPT, add_special_tokens=False)
    logits = model(mx.array(ids)[None])[0].astype(mx.float32)
    ref = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    r = client.completions.create(model="tiny-llama", prompt=ids, max_tokens=8, temperature=0, logprobs=5, echo=True,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    served = lp.token_logprobs[1:len(ids)]
    expected = [ref[i, ids[i + 1]] for i in range(len(ids) - 1)]
    assert np.allclose(served, expected, atol=1e-3)
    for i in range(1, len(ids)):  # top-5 alternatives match too
        top_ref = np.sort(ref[i - 1])[::-1][:5]
        assert np.allclose(sorted(lp.top_logprobs[i].values(), reverse=True), top_ref, atol=1e-3)
    greedy = [t for t, _ in zip(generate_step(mx.array(ids), model, max_tokens=8), range(8))]
    greedy_ids = [int(t) for t, _ in greedy]
    assert r.choices[0].text[len(tok.decode(ids)):] == tok.decode(greedy_ids)


def test_default_model_greedy_equals_mlx_lm(default_server):
    """The real SmolLM2 GGUF: greedy chat output equals mlx-lm's generate_step, token for token."""
    model, tok, _ = load_gguf(default_model_path(), dequantize=True, dtype=mx.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.encode_chat(messages)
    ref = []
    for t, _ in generate_step(mx.array(ids), model, max_tokens=24):
        if int(t) in tok.eos_ids:
            break
        ref.append(int(t))
    client = default_server.openai()
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=24, temperature=0,
                                       logprobs=True)
    served_tokens = [bytes(e.bytes) for e in r.choices[0].logprobs.content]
    assert served_tokens == [tok.token_bytes(t) for t in ref]
    assert r.choices[0].message.content == tok.decode(ref)
    assert "Paris" in r.choices[0].message.content
    # The hub id works as an alias for the embedded model.
    r2 = client.chat.completions.create(model="HuggingFaceTB/SmolLM2-135M-Instruct", messages=messages, max_tokens=4,
                                        temperature=0)
    assert r2.choices[0].message.content == tok.decode(ref[:4]) or r2.choices[0].finish_reason == "stop"
