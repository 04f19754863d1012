"""Vision-language models: greedy output equals mlx-vlm's own generate (two families), every
image input kind and wire format, the feature cache, and each refusal."""
import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server
from tests.fixtures.tiny_vlms import build_tiny_gemma3, build_tiny_qwen2_vl

PROMPT = "What is in this picture?"
MAX = 8


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {"tiny-qwen2-vl": build_tiny_qwen2_vl(root / "tiny-qwen2-vl"),
            "tiny-gemma3": build_tiny_gemma3(root / "tiny-gemma3")}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    for i in range(2):
        pixels = (np.random.default_rng(i).random((60, 80, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    return folder


class ImageHost:
    """Serves the pictures folder over HTTP, plus /hop/N redirect chains."""

    def __init__(self, folder):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.startswith("/hop/"):
                    n = int(self.path.split("/")[2])
                    self.send_response(302)
                    self.send_header("location", f"/hop/{n - 1}" if n > 1 else "/img0.png")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                f = folder / self.path.lstrip("/")
                if not f.is_file():
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def reference(folder, image) -> str:
    """mlx-vlm's own greedy generate for the same prompt and image."""
    from mlx_vlm import generate, load

    model, processor = load(str(folder))
    tok = processor.tokenizer
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return generate(model, processor, prompt, image=[str(image)], max_tokens=MAX, temperature=0.0, verbose=False).text


def chat(s, model, url, question=None, **kw):
    """One question about one image; with `question`, the text comes first, then the image."""
    image = {"type": "image_url", "image_url": {"url": url}}
    content = [image, {"type": "text", "text": PROMPT}] if question is None else [{"type": "text", "text": question}, image]
    r = s.openai().chat.completions.create(model=model, temperature=0, max_tokens=MAX, extra_body={"ignore_eos": True},
                                           messages=[{"role": "user", "content": content}], **kw)
    return r.choices[0].message.content


@pytest.fixture(scope="module")
def vserver(vlms, pictures, tiny_model, tmp_path_factory):
    args = ["--model", str(vlms["tiny-qwen2-vl"]), "--model", str(vlms["tiny-gemma3"]), "--model", str(tiny_model),
            "--embedding-model", "none", "--image-dir", str(pictures), "--image-allow-private", "on",
            "--health-interval", "0.3"]
    s = Server(args, tmp_path_factory.mktemp("vdata")).wait_ready()
    yield s
    s.stop()


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-gemma3"])
def test_greedy_output_equals_mlx_vlm(vserver, vlms, pictures, family):
    outs = [chat(vserver, family, data_uri(pictures / f"img{i}.png")) for i in range(2)]
    for i, out in enumerate(outs):
        assert out == reference(vlms[family], pictures / f"img{i}.png")
    assert outs[0] != outs[1]  # the image reaches the model
    assert any(m.id == family for m in vserver.openai().models.list().data)


def test_every_input_kind_and_wire_format(vserver, pictures):
    host = ImageHost(pictures)
    want = chat(vserver, "tiny-qwen2-vl", data_uri(pictures / "img0.png"))
    assert chat(vserver, "tiny-qwen2-vl", str(pictures / "img0.png")) == want  # local path
    assert chat(vserver, "tiny-qwen2-vl", f"file://{pictures / 'img0.png'}") == want
    assert chat(vserver, "tiny-qwen2-vl", f"{host.url}/img0.png") == want  # http
    assert chat(vserver, "tiny-qwen2-vl", f"{host.url}/hop/2") == want  # redirects within the cap
    streamed = vserver.openai().chat.completions.create(
        model="tiny-qwen2-vl", temperature=0, max_tokens=MAX, stream=True, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(pictures / "img0.png")}},
                                               {"type": "text", "text": PROMPT}]}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want

    import anthropic

    a = anthropic.Anthropic(base_url=vserver.base_url, api_key=vserver.keys[0], max_retries=0)
    b64 = base64.b64encode((pictures / "img0.png").read_bytes()).decode()
    msg = a.messages.create(model="tiny-qwen2-vl", max_tokens=MAX, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
        {"type": "text", "text": PROMPT}]}], extra_body={"ignore_eos": True, "temperature": 0})
    assert msg.content[0].text == want
    count = a.messages.count_tokens(model="tiny-qwen2-vl", messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
        {"type": "text", "text": PROMPT}]}])
    assert count.input_tokens > 10  # the image's tokens are counted
    resp = vserver.openai().responses.create(model="tiny-qwen2-vl", temperature=0, max_output_tokens=MAX, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": data_uri(pictures / "img0.png")},
                                     {"type": "input_text", "text": PROMPT}]}], extra_body={"ignore_eos": True})
    assert resp.output_text == want
    host.server.shutdown()


def test_feature_cache_hit_on_the_same_image(vserver, pictures):
    def stats():
        return httpx.get(vserver.base_url + "/v1/stats", headers=vserver.headers).json()["prefix_cache"]["vision_features"]

    pixels = (np.random.default_rng(7).random((50, 50, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(pictures / "fresh.png")
    # The question goes before the image and changes, so no prompt-cache prefix covers the image:
    # the vision tower is asked again, and the feature cache answers.
    before = stats()
    first = chat(vserver, "tiny-gemma3", data_uri(pictures / "fresh.png"), question="Look:")
    mid = stats()
    assert mid["misses"] == before["misses"] + 1 and mid["hits"] == before["hits"]
    chat(vserver, "tiny-gemma3", str(pictures / "fresh.png"), question="Now look again:")  # same bytes: a hit
    after = stats()
    assert after["hits"] == mid["hits"] + 1 and after["misses"] == mid["misses"]
    assert first


def _refused(s, model, url, words):
    with pytest.raises(Exception) as err:
        chat(s, model, url)
    assert err.value.status_code == 400, err.value
    assert words in str(err.value), str(err.value)


def test_refusals(vserver, vlms, pictures, tmp_path):
    _refused(vserver, "tiny-llama", data_uri(pictures / "img0.png"), "does not accept images")
    r = httpx.post(vserver.base_url + "/v1/completions", headers=vserver.headers, timeout=60, json={
        "model": "tiny-qwen2-vl", "prompt": "hi", "max_tokens": 2, "echo": True, "logprobs": 1})
    assert r.status_code == 400 and "echo with logprobs" in r.json()["error"]["message"]  # refused, worker fine
    _refused(vserver, "tiny-qwen2-vl", "/etc/hostname", "outside the allowed image folders")
    _refused(vserver, "tiny-qwen2-vl", f"{pictures}/../../../etc/hostname", "outside the allowed image folders")
    _refused(vserver, "tiny-qwen2-vl", str(pictures / "missing.png"), "No image file")
    _refused(vserver, "tiny-qwen2-vl", str(pictures / "not-an-image.png"), "could not be decoded")
    _refused(vserver, "tiny-qwen2-vl", "data:image/png;base64,@@@not-base64", "not valid base64")
    _refused(vserver, "tiny-qwen2-vl", "ftp://example.com/x.png", "Unsupported image source")
    host = ImageHost(pictures)
    _refused(vserver, "tiny-qwen2-vl", f"{host.url}/hop/9", "Too many redirects")
    _refused(vserver, "tiny-qwen2-vl", f"{host.url}/nothing.png", "HTTP 404")

    big = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(3).random((300, 300, 3)) * 255).astype("uint8")).save(big)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), "red").save(wide)
    strict = Server(["--model", str(vlms["tiny-qwen2-vl"]), "--embedding-model", "none", "--image-max-mb", "0.1",
                     "--image-max-pixels", "10000"], tmp_path / "data").wait_ready()
    try:
        _refused(strict, "tiny-qwen2-vl", f"{host.url}/img0.png", "private, loopback or link-local")
        _refused(strict, "tiny-qwen2-vl", "http://169.254.169.254/latest/meta-data", "private, loopback or link-local")
        _refused(strict, "tiny-qwen2-vl", str(pictures / "img0.png"), "Local image paths are turned off")
        _refused(strict, "tiny-qwen2-vl", data_uri(big), "larger than the 0.1 MB limit")
        _refused(strict, "tiny-qwen2-vl", data_uri(wide), "more than the 10,000 pixel limit")
        assert chat(strict, "tiny-qwen2-vl", data_uri(pictures / "img0.png"))  # and it still serves
    finally:
        strict.stop()
        host.server.shutdown()


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-gemma3"])
def test_concurrent_vlm_requests_and_text_models_keep_their_answers(vserver, pictures, family):
    from concurrent.futures import ThreadPoolExecutor

    alone = [chat(vserver, family, data_uri(pictures / f"img{i % 2}.png")) for i in range(2)]
    text = lambda: vserver.openai().chat.completions.create(  # noqa: E731
        model="tiny-llama", temperature=0, max_tokens=MAX, messages=[{"role": "user", "content": "hello"}],
        extra_body={"ignore_eos": True}).choices[0].message.content
    text_alone = text()
    with ThreadPoolExecutor(6) as pool:
        vis = [pool.submit(chat, vserver, family, data_uri(pictures / f"img{i % 2}.png")) for i in range(4)]
        txt = [pool.submit(text) for _ in range(2)]
        assert [f.result() for f in vis] == [alone[i % 2] for i in range(4)]
        assert [f.result() for f in txt] == [text_alone] * 2


def reference_chat(folder, image, messages) -> str:
    from mlx_vlm import generate, load

    model, processor = load(str(folder))
    prompt = processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return generate(model, processor, prompt, image=[str(image)], max_tokens=MAX, temperature=0.0, verbose=False).text


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-gemma3"])
def test_conversation_with_an_image_reuses_its_prefix(vserver, vlms, pictures, family):
    img = pictures / "img1.png"
    turn1 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(img)}},
                                          {"type": "text", "text": PROMPT}]}]
    c = vserver.openai()
    first = c.chat.completions.create(model=family, messages=turn1, temperature=0, max_tokens=MAX,
                                      extra_body={"ignore_eos": True})
    answer = first.choices[0].message.content
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Say more."}]
    second = c.chat.completions.create(model=family, messages=turn2, temperature=0, max_tokens=MAX,
                                       extra_body={"ignore_eos": True})
    cached = second.usage.prompt_tokens_details.cached_tokens
    ref_msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                {"role": "assistant", "content": answer}, {"role": "user", "content": "Say more."}]
    assert second.choices[0].message.content == reference_chat(vlms[family], img, ref_msgs)
    assert cached >= first.usage.prompt_tokens  # the image and the first question came from the cache


def test_vision_features_survive_a_worker_restart(vserver, pictures):
    import os
    import signal

    def stats():
        return httpx.get(vserver.base_url + "/v1/stats", headers=vserver.headers).json()["prefix_cache"]["vision_features"]

    def restart():
        before = vserver.health()["worker"]["restarts"]
        os.kill(vserver.health()["worker"]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                h = vserver.health()
                if h["worker"]["restarts"] > before and h["worker"]["ready"]:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("the worker did not come back")

    pixels = (np.random.default_rng(11).random((64, 48, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(pictures / "kept.png")
    first = chat(vserver, "tiny-qwen2-vl", data_uri(pictures / "kept.png"), question="Describe:")
    folder = vserver.data_dir / "cache" / "vision"
    deadline = time.monotonic() + 10
    while not list(folder.glob("*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.2)  # written off the engine thread
    assert list(folder.glob("*.safetensors"))
    restart()
    assert chat(vserver, "tiny-qwen2-vl", data_uri(pictures / "kept.png"), question="Describe:") == first
    assert stats()["disk_hits"] == 1  # read back from disk, not recomputed
    for f in folder.glob("*.safetensors"):  # a truncated file is dropped, never fatal
        f.write_bytes(f.read_bytes()[:40])
    restart()
    assert chat(vserver, "tiny-qwen2-vl", data_uri(pictures / "kept.png"), question="Describe:") == first
    assert stats()["disk_hits"] == 0
