"""A K-quant GGUF (llama.cpp's Q4_K_M mix) served through the real gateway and worker, kept
quantized at a forced width, answering the official SDK like any model."""
import httpx

from tests.conftest import Server
from tests.fixtures.tiny_models import TINY_LLAMA_256, build_tiny_gguf


def test_q4_k_m_gguf_is_served(tmp_path):
    path, _ = build_tiny_gguf(tmp_path / "tiny-q4km.gguf", "Q4_K_M", cfg=TINY_LLAMA_256)
    s = Server(["--model", str(path), "--dequantize", "off", "--gguf-bits", "8", "--embedding-model", "none"],
               tmp_path / "data").wait_ready()
    try:
        c = s.openai()
        assert [m.id for m in c.models.list().data if m.id == "tiny-q4km"]
        r = c.chat.completions.create(model="tiny-q4km", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                      temperature=0, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 6 and r.choices[0].message.content
        log = (tmp_path / "data" / "gateway.log").read_text()
        assert "re-quantized to MLX affine 8-bit" in log and "Q4_K x" in log and "Q6_K x" in log
        bad = httpx.post(s.base_url + "/v1/chat/completions", headers=s.headers, json={"model": "tiny-q4km"})
        assert bad.status_code == 400
    finally:
        s.stop()
