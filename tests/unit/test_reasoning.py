"""Reasoning split on recorded outputs, streamed split at every character boundary."""
import pytest

from novamlx_worker.text.reasoning import ReasoningSplitter

CASES = [
    ("<think>Two plus two is four.</think>\nThe answer is 4.", False, "The answer is 4.", "Two plus two is four."),
    ("  <think>hmm</think>ok", False, "ok", "hmm"),
    ("Plain answer with <think> in the middle.", False, "Plain answer with <think> in the middle.", ""),
    ("reasoning without an opening tag</think>Answer.", True, "Answer.", "reasoning without an opening tag"),
    ("<think>never closed", False, "", "never closed"),
]


def run(text, implicit, cuts):
    sp = ReasoningSplitter(implicit)
    answer = reasoning = ""
    for a, b in zip((0, *cuts), (*cuts, len(text))):
        x, y = sp.feed(text[a:b])
        answer, reasoning = answer + x, reasoning + y
    x, y = sp.finish()
    return answer + x, reasoning + y


@pytest.mark.parametrize("text,implicit,answer,reasoning", CASES)
def test_every_split(text, implicit, answer, reasoning):
    for cut in range(len(text) + 1):
        assert run(text, implicit, (cut,) if 0 < cut < len(text) else ()) == (answer, reasoning), cut
    assert run(text, implicit, tuple(range(1, len(text)))) == (answer, reasoning)
