"""KV-cache quantization: the engine's quantized KV against mlx-lm's own quantized-cache
generation, batched rows against each row alone, and admission priced in quantized bytes."""
import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.utils import load

from novamlx_worker.engine.engine import Engine
from novamlx_worker.memory import MemoryEnforcer
from novamlx_worker.models.pool import ModelPool, kv_bytes_per_token
from protocol import messages as m
from tests.fixtures.events import tokens_of
from tests.fixtures.tiny_models import TINY_LLAMA, build_tiny_llama

# head_dim 64: KV quantizes in groups of 32 or 64 along the head dimension
WIDE = {**TINY_LLAMA, "hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
PROMPTS = [list(range(300, 340)), list(range(900, 925)), list(range(1500, 1560))]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("kvq") / "tiny-wide", seed=3, cfg=WIDE)


def make_engine(path, bits):
    events = []
    pool = ModelPool([str(path)], [], "auto")
    eng = Engine(pool, events.append, MemoryEnforcer("90%"), max_batch=8, kv=(bits, 64))
    eng.events = events
    return eng


def run(eng, prompts, n=24, together=True):
    """Greedy token ids per prompt: all submitted at once (batched) or one after another."""
    def finished(rid):
        return any(isinstance(e, (m.Finished, m.Error)) and e.id == rid for e in eng.events)

    rids = []
    for i, p in enumerate(prompts):
        rid = f"r{len(eng.events)}-{i}"
        rids.append(rid)
        eng.handle(m.Generate(rid, "tiny-wide", m.Sampling(temperature=0, max_tokens=n, ignore_eos=True, logprobs=True),
                              prompt_tokens=p))
        while not together and not finished(rid):
            eng.step()
    while not all(finished(r) for r in rids):
        eng.step()
    errors = [e for e in eng.events if isinstance(e, m.Error)]
    assert not errors, errors
    return [tokens_of(eng.events, r) for r in rids]


def mlx_lm_tokens(path, prompt, n, bits):
    model, _ = load(str(path))
    toks = []
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=n, kv_bits=bits, kv_group_size=64,
                                quantized_kv_start=0):
        toks.append(int(tok))
    return toks


def test_kv8_alone_equals_mlx_lm_quantized_cache(wide_model):
    eng = make_engine(wide_model, 8)
    ours = run(eng, PROMPTS[:1], together=False)[0]
    tok = eng.models.get("tiny-wide").tokenizer
    want = [tok.token_text(t) for t in mlx_lm_tokens(wide_model, PROMPTS[0], 24, 8)]
    assert ours == want


@pytest.mark.parametrize("bits,contiguous", [(8, False), (4, False), (8, True)])
def test_quantized_rows_batched_equal_each_alone(wide_model, bits, contiguous, monkeypatch):
    import novamlx_worker.engine.models as models

    strided = run(make_engine(wide_model, bits), PROMPTS, together=False)
    if contiguous:  # as on a device whose quantized attention needs contiguous arrays (MLX 0.32 CUDA)
        monkeypatch.setattr(models, "support", lambda *a: "contiguous")
    eng = make_engine(wide_model, bits)
    alone = run(eng, PROMPTS, together=False)
    batched = run(eng, PROMPTS, together=True)
    assert eng.stats()["engine"]["batches"]["tiny-wide"]["kv_bits"] == bits
    assert batched == alone == strided


def test_admission_prices_quantized_bytes(wide_model):
    eng = make_engine(wide_model, 4)
    lm = eng.models.get("tiny-wide")
    plain, q8, q4 = (kv_bytes_per_token(lm, b) for b in (0, 8, 4))
    assert q4 < q8 < plain  # fp32 here (dequantized on CPU): 4 bits is ~1/7 of plain
    eng.handle(m.Generate("priced", "tiny-wide", m.Sampling(max_tokens=10), prompt_tokens=PROMPTS[0]))
    seq = eng.seqs["priced"]
    assert seq.kv_bytes == (len(PROMPTS[0]) + 10) * q4


def test_quantized_blocks_cached_quantized_and_reused(wide_model, tmp_path):
    """With kv_bits 8 the prefix cache keeps blocks as packed words + scales + biases (a fraction
    of plain bytes); a resent prompt reuses them; evicted to the SSD tier and read back, they
    still serve the same answer."""
    from novamlx_worker.engine.ssd_cache import SSDTier

    events = []
    eng = Engine(ModelPool([str(wide_model)], [], "auto"), events.append, MemoryEnforcer("90%"), max_batch=8,
                 block_size=16, kv=(8, 64), ssd=SSDTier(str(tmp_path / "ssd"), 10**9))
    eng.events = events
    prompt = list(range(2000, 2100))
    first = run(eng, [prompt], together=False)[0]
    pc = eng.caches["tiny-wide"]
    block = next(iter(pc.blocks.values()))
    assert len(block.keys[0]) == 3 and block.keys[0][0].dtype == mx.uint32  # stored quantized
    plain_bytes = 2 * len(block.keys) * 1 * 16 * 64 * 4  # K+V, layers, kv heads, block, head dim, fp32
    assert block.nbytes < plain_bytes / 2
    again = run(eng, [prompt], together=False)[0]
    fin = [e for e in events if isinstance(e, m.Finished)][-1]
    assert fin.usage.cached_tokens >= 80 and again == run(eng, [prompt], together=False)[0]
    pc.clear()  # every block to the SSD tier
    eng.models.ssd.flush()  # written to disk: read back through the file metadata
    from_disk = run(eng, [prompt], together=False)[0]
    assert pc.stats.ssd_hits > 0 and from_disk == again
    assert len(first) == len(again) == 24
