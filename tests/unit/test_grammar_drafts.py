"""The grammar processor on draft positions: called on a continuation that is then not kept, it
rolls back, and its masks equal those of a processor that only ever saw the kept tokens."""
import mlx.core as mx
import numpy as np

from novamlx_worker.grammar import GrammarProcessor, compile_format
from novamlx_worker.text.tokenizer import from_gguf_metadata
from tests.fixtures.tiny_models import gguf_metadata

VOCAB = 49152


def allowed(proc, context: list[int]) -> np.ndarray:
    out = proc(mx.array(context, dtype=mx.uint32), mx.zeros((1, VOCAB)))
    return np.isfinite(np.array(out[0]))


def test_rollback_to_the_kept_tokens():
    tok = from_gguf_metadata(gguf_metadata())
    grammar = compile_format({"type": "json_object"})
    ids = lambda s: tok.encode(s, add_special=False)  # noqa: E731
    prompt = [1, 2, 3]
    kept, dropped = ids('{"a": 1'), ids('{"a": "xyz", "b": [1, 2]')
    assert kept[:2] == dropped[:2] and kept != dropped[: len(kept)]
    spec, fresh = GrammarProcessor(grammar, tok, VOCAB), GrammarProcessor(grammar, tok, VOCAB)
    allowed(spec, prompt)
    allowed(fresh, prompt)
    for j in range(1, len(dropped) + 1):  # a drafting step walking a long draft...
        allowed(spec, prompt + dropped[:j])
    got = allowed(spec, prompt + kept)  # ...of which less was kept, and other tokens came
    want = allowed(fresh, prompt + kept)
    assert (got == want).all() and got.sum() > 0
    assert spec.fed == kept
