"""Tool-call parsing on recorded outputs, streamed split at every character boundary."""
import json

import pytest

from novamlx_worker.text.tool_parsers import ToolCallParser

CASES = [
    ("Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
     "Let me check.", [("get_weather", {"city": "Paris"})]),
    ("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {\"x\": 1}}</tool_call>",
     "", [("a", {}), ("b", {"x": 1})]),
    ("<|tool_call|>{\"name\": \"f\", \"arguments\": {\"q\": \"x<y\"}}<|/tool_call|>", "", [("f", {"q": "x<y"})]),
    ("<tool>{\"name\": \"t\", \"parameters\": {\"n\": 2}}</tool>", "", [("t", {"n": 2})]),
    ("Sure [TOOL_CALLS] [{\"name\": \"m\", \"arguments\": {\"k\": \"v\"}}]", "Sure ", [("m", {"k": "v"})]),
    ("<function=search>{\"query\": \"mlx\"}</function>", "", [("search", {"query": "mlx"})]),
    ("<function=search><parameter=query>mlx</parameter><parameter=n>3</parameter></function>", "",
     [("search", {"query": "mlx", "n": 3})]),
    ("ok <minimax:tool_call><invoke name=\"run\"><parameter name=\"cmd\">ls -la</parameter></invoke></minimax:tool_call>",
     "ok ", [("run", {"cmd": "ls -la"})]),
    ("No tools here, just a < b and [1, 2].", "No tools here, just a < b and [1, 2].", []),
    # GLM 4.5
    ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n"
     "<arg_value>2</arg_value>\n</tool_call>", "", [("get_weather", {"city": "Paris", "days": 2})]),
    # FunctionGemma
    ("<start_function_call>call:get_weather{city:<escape>Paris, FR<escape>,days:2}<end_function_call>", "",
     [("get_weather", {"city": "Paris, FR", "days": 2})]),
    # DeepSeek V3
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```"
     "<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "", [("get_weather", {"city": "Paris"})]),
    # Llama 3.x, with and without <|python_tag|>
    ("<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "",
     [("get_weather", {"city": "Paris"})]),
    ("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", [("get_weather", {"city": "Paris"})]),
    ("{\"not\": \"a call\"}", "{\"not\": \"a call\"}", []),
    ("<tool_call>{not json}</tool_call> after", "<tool_call>{not json}</tool_call> after", []),  # degrades to text
]


def run(text: str, cut_every: int | None = None, cuts: tuple[int, ...] = ()):
    p = ToolCallParser()
    pieces = [text[i:i + cut_every] for i in range(0, len(text), cut_every)] if cut_every else \
        [text[a:b] for a, b in zip((0, *cuts), (*cuts, len(text)))]
    content, calls = "", []
    for piece in pieces:
        c, k = p.feed(piece)
        content += c
        calls += k
    c, k = p.finish()
    return content + c, [(x.name, json.loads(x.arguments)) for x in calls + k]


@pytest.mark.parametrize("text,content,calls", CASES)
def test_every_split_point(text, content, calls):
    assert run(text, cut_every=len(text)) == (content, calls)
    for cut in range(1, len(text)):
        assert run(text, cuts=(cut,)) == (content, calls), cut
    assert run(text, cut_every=1) == (content, calls)


def test_markup_never_leaks_mid_stream():
    text = CASES[0][0]
    p = ToolCallParser()
    shown = ""
    for ch in text:
        c, _ = p.feed(ch)
        shown += c
        assert "<tool" not in shown and "tool_call" not in shown


def test_families_chosen_by_template_or_setting():
    from novamlx_worker.text.tool_parsers import FAMILIES, families_for

    assert families_for("... <tool_call> ...") == [FAMILIES[0]]
    assert families_for("{{ '[TOOL_CALLS]' }}") == [FAMILIES[6]]
    assert families_for("plain ChatML") == FAMILIES
    assert families_for(None, "mistral,hermes") == [FAMILIES[0], FAMILIES[6]]
    with pytest.raises(ValueError):
        families_for(None, "nope")
    # Only Mistral: Hermes markup stays text.
    p = ToolCallParser(families_for(None, "mistral"))
    text = CASES[0][0]
    assert p.feed(text)[0] + p.finish()[0] == text
