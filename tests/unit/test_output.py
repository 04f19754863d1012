"""engine/output.py with a fake tokenizer: tokens in, the client's deltas out (no model)."""
from novamlx_worker.engine.output import Output
from novamlx_worker.text.reasoning import ReasoningSplitter
from novamlx_worker.text.tool_parsers import ToolCallParser, families_for


class WordTokenizer:
    """Token i is WORDS[i]; 'é' is split over two tokens as UTF-8 bytes would be."""
    WORDS = ["Hello", " world", "<think>", "plan", "</think>", "<tool_call>", '{"name": "f", "arguments": {"a": 1}}',
             "</tool_call>", " E", "N", "D", "\xc3", "\xa9", "<eos>", '{"name": "f", "argum']

    def decode_visible(self, ids):
        raw = "".join(self.WORDS[i] for i in ids if self.WORDS[i] != "<eos>")
        data = raw.encode("latin-1", "ignore") if any(self.WORDS[i] in ("\xc3", "\xa9") for i in ids) else None
        return data.decode("utf-8", "replace") if data is not None else raw

    def token_text(self, t):
        return self.WORDS[t]

    def token_bytes(self, t):
        return self.WORDS[t].encode()


TOK = WordTokenizer()
EOS = 13


def run(out: Output, tokens: list[int], finish: str | None):
    """Feed one token per step, the last with the finish reason; (all deltas, the last step)."""
    deltas, step = [], None
    for i, t in enumerate(tokens):
        step = out.feed([t], finish if i == len(tokens) - 1 else None)
        if step.delta is not None:
            deltas.append(step.delta)
        if step.reason is not None:
            break
    return deltas, step


def text(deltas):
    return "".join(d.text for d in deltas)


def test_plain_text_and_end_token_not_shown():
    deltas, step = run(Output("r", TOK, []), [0, 1, EOS], "stop")
    assert text(deltas) == "Hello world" and step.reason == "stop" and step.stop is None


def test_stop_string_across_tokens_ends_early_and_is_cut():
    out = Output("r", TOK, ["END"])
    deltas, step = run(out, [0, 8, 9, 10, 1], None)
    assert text(deltas) == "Hello " and step.reason == "stop" and step.stop == "END"


def test_several_tokens_in_one_step_stop_at_the_stop_string():
    step = Output("r", TOK, ["END"]).feed([0, 8, 9, 10, 1, 1])
    assert step.delta.text == "Hello " and step.reason == "stop" and step.used == 4


def test_held_back_stop_prefix_is_released_at_the_end():
    deltas, step = run(Output("r", TOK, ["ENDING"]), [0, 8, 9, EOS], "stop")
    assert text(deltas) == "Hello EN" and step.reason == "stop"


def test_split_character_waits_for_its_second_byte():
    out = Output("r", TOK, [])
    assert out.feed([11]).delta is None
    assert out.feed([12], "length").delta.text == "é"


def test_reasoning_and_tool_call_become_their_own_fields():
    out = Output("r", TOK, [], ReasoningSplitter(), ToolCallParser(families_for(None, "hermes")))
    deltas, step = run(out, [2, 3, 4, 5, 6, 7, EOS], "stop")
    assert "".join(d.reasoning for d in deltas) == "plan"
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert [(c.index, c.name, c.arguments) for c in calls] == [(0, "f", '{"a": 1}')]
    assert step.reason == "tool_calls"


def test_cut_tool_call_is_reported_incomplete():
    out = Output("r", TOK, [], None, ToolCallParser(families_for(None, "hermes")))
    deltas, step = run(out, [5, 14], "length")
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert step.reason == "length" and len(calls) == 1 and calls[0].incomplete


def test_logprob_entries_skip_the_end_token():
    step = Output("r", TOK, []).feed([0, EOS], "stop", [(-0.5, [(0, -0.5), (1, -2.0)]), (-0.1, [])])
    assert [e.token for e in step.delta.logprobs] == ["Hello"]
    assert step.delta.logprobs[0].top[1].token == " world"
