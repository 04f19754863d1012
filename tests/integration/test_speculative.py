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
