"""N-gram speculative decoding through the server: the flag reaches the worker, a greedy
answer is the same with drafts on as off, and /v1/stats counts proposed and accepted tokens."""
from tests.conftest import Server

ASK = dict(model="tiny-llama", max_tokens=48, temperature=0, extra_body={"ignore_eos": True},
           messages=[{"role": "user", "content": "repeat after me: " + "alpha beta gamma delta " * 12}])


def test_ngram_drafts_keep_the_greedy_answer(tiny_model, tmp_path):
    answers, stats = [], None
    for flag in ("0", "6"):
        s = Server(["--model", str(tiny_model), "--embedding-model", "none", "--speculative-ngram", flag],
                   tmp_path / flag).wait_ready()
        try:
            c = s.openai()
            answers.append(c.chat.completions.create(**ASK).choices[0].message.content)
            stats = s.stats()["engine"]["batches"]["tiny-llama"].get("ngram")
            if stats:  # a request that turns drafts off decodes plainly: no draft step counted
                off = c.chat.completions.create(**{**ASK, "extra_body": {"ignore_eos": True, "speculative": False}})
                assert off.choices[0].message.content == answers[-1]
                assert s.stats()["engine"]["batches"]["tiny-llama"]["ngram"]["steps"] == stats["steps"]
                import anthropic

                from tests.conftest import API_KEY

                client = anthropic.Anthropic(base_url=s.base_url, api_key=API_KEY, max_retries=0,
                                             _strict_response_validation=True)
                msg = client.messages.create(model="tiny-llama", max_tokens=8, messages=ASK["messages"],
                                                    extra_body={"speculative": False})
                assert msg.usage.output_tokens >= 1
        finally:
            s.stop()
    assert answers[0] == answers[1]
    assert stats is not None and stats["steps"] > 0 and stats["proposed"] >= stats["accepted"] >= 0


def test_draft_model_set_through_the_admin_settings(tiny_model, tmp_path):
    """draft_model set per model with the admin API: a name that is not served, the model itself
    and an embedding model are refused with a 400 naming the field; the target's twin is taken, and
    two concurrent answers (the slot batch drafting with the twin) equal those before; /v1/stats
    counts the draft model's proposals."""
    import shutil
    import threading

    import httpx

    twin = tmp_path / "models" / "tiny-twin"
    shutil.copytree(tiny_model, twin)
    s = Server(["--model", str(tiny_model), "--model", str(twin), "--admin-key", "adm"], tmp_path / "data").wait_ready()
    base, hdr = f"http://127.0.0.1:{s.admin_port}/admin/models", {"x-admin-key": "adm"}
    try:
        c = s.openai()
        asks = [dict(ASK, max_tokens=40), dict(ASK, max_tokens=30, messages=[{"role": "user", "content": "count: " +
                                                                               "one two three " * 10}])]

        def together() -> list[str]:
            out = [None, None]

            def one(i):
                out[i] = c.chat.completions.create(**asks[i]).choices[0].message.content
            threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out

        before = together()
        embedder = next(m.id for m in c.models.list().data if "minilm" in m.id.lower())
        for bad, words in (("nope", "no served model"), ("tiny-llama", "itself"), (embedder, "embedding model")):
            r = httpx.put(f"{base}/tiny-llama/settings", headers=hdr, json={"draft_model": bad})
            assert r.status_code == 400 and words in r.text and r.json()["error"]["param"] == "draft_model", r.text
        r = httpx.put(f"{base}/tiny-llama/settings", headers=hdr, json={"draft_model": "tiny-twin", "num_draft_tokens": 4})
        assert r.status_code == 200, r.text
        assert together() == before
        stats = s.stats()["engine"]["batches"]["tiny-llama"]["draft_model"]
        assert stats["proposed"] > 0 and stats["accepted"] == stats["proposed"], stats  # the twin agrees every time
    finally:
        s.stop()


def test_default_model_answers_the_same_with_drafts(tmp_path):
    """The real embedded model (SmolLM2-135M) on bench_spec's edit task, drafts on for the server: a
    lone drafting stream, and a drafting row beside a `speculative: false` row in the slot batch,
    give the plain answer (a `speculative: false` request alone) token for token, with drafts kept."""
    import threading

    from novamlx_worker.bench_spec import TASKS

    EDIT = TASKS["rename"]

    s = Server(["--speculative-ngram", "6", "--embedding-model", "none"], tmp_path, keys=()).wait_ready()
    try:
        c = s.openai()
        model = c.models.list().data[0].id

        def ask(speculative: bool, n: int = 48) -> str:
            r = c.chat.completions.create(model=model, max_tokens=n, temperature=0, messages=[{"role": "user",
                                          "content": EDIT}], extra_body={"ignore_eos": True, "speculative": speculative})
            return r.choices[0].message.content

        plain = ask(False)
        assert ask(True) == plain
        out = {}
        threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, ask(k))) for k in (True, False)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == {True: plain, False: plain}
        stats = s.stats()["engine"]["batches"][model]["ngram"]
        assert stats["accepted"] > 10, stats
    finally:
        s.stop()


def test_windowed_and_hybrid_models_draft_together_through_the_server(tmp_path):
    """A sliding-window model (gemma3_text) and a hybrid one (lfm2) served with n-gram drafts on:
    two concurrent streamed completions per model batch in the slot batch and draft there
    (/v1/stats: path "slots", drafting steps), and every answer equals the drafts-off server's."""
    import threading

    from tests.fixtures.tiny_models import TINY_GEMMA3, TINY_LFM2, build_tiny_mlx

    names = {"tiny-gemma3-text": TINY_GEMMA3, "tiny-lfm2": TINY_LFM2}
    paths = [build_tiny_mlx(tmp_path / "models" / n, cfg, seed=5) for n, cfg in names.items()]
    prompts = [("alpha beta gamma delta " * 30).strip(), ("one two three four five " * 20).strip()]  # its end recurs

    def answers(flag: str) -> tuple[dict, dict]:
        args = ["--embedding-model", "none", "--speculative-ngram", flag, "--speculative-ngram-max-match", "6"]
        s = Server(sum((["--model", str(p)] for p in paths), []) + args, tmp_path / f"d{flag}").wait_ready()
        try:
            c = s.openai(strict=False)  # OpenAI's wire: a completion chunk's finish_reason is null until the last
            out = {}

            def one(model, i):
                stream = c.completions.create(model=model, prompt=prompts[i], max_tokens=32, temperature=0, stream=True,
                                              extra_body={"ignore_eos": True})
                out[model, i] = "".join(ch.choices[0].text for ch in stream if ch.choices)
            threads = [threading.Thread(target=one, args=(n, i)) for n in names for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out, s.stats()["engine"]["batches"]
        finally:
            s.stop()

    plain, _ = answers("0")
    drafted, batches = answers("6")
    assert len(plain) == 4 and drafted == plain
    for name in names:
        assert batches[name]["path"] == "slots" and batches[name]["ngram"]["steps"] > 0, batches[name]
