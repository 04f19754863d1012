"""Tool calls out of generated text, while it streams.

Each family is a start marker, an end marker and a body reader; the parser passes content
through until a start marker may be forming (it holds back any tail that could still
become one), then collects until the end marker and emits the finished call. A body that
does not parse degrades to plain content, so a malformed call never breaks a stream.

Families: Hermes/Qwen `<tool_call>{json}</tool_call>`, `<tool>{json}</tool>`, marker
`<|tool_call|>{json}<|/tool_call|>`, Mistral `[TOOL_CALLS] [{...}]`, XML
`<function=name>{json or <parameter=k>v</parameter>}</function>`, namespaced
`<ns:tool_call><invoke name="..."><parameter name="k">v</parameter></invoke></ns:tool_call>`.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text (of a call cut by max_tokens: as far as it got)
    id: str = ""
    incomplete: bool = False

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"


def _json_calls(body: str) -> list[ParsedCall] | None:
    """A JSON object or list of objects with name + arguments/parameters."""
    try:
        data = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    items = data if isinstance(data, list) else [data]
    out = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            return None
        args = it.get("arguments", it.get("parameters", {}))
        out.append(ParsedCall(it["name"], args if isinstance(args, str) else json.dumps(args)))
    return out


_PARAM = re.compile(r"<parameter[= ](?:name=)?\"?([^>\"]+)\"?>(.*?)</parameter>", re.S)


def _value(text: str):
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _function_xml(body: str, name: str) -> list[ParsedCall] | None:
    body = body.strip()
    if body.startswith("{"):
        try:
            return [ParsedCall(name, json.dumps(json.loads(body)))]
        except json.JSONDecodeError:
            return None
    return [ParsedCall(name, json.dumps({k: _value(v) for k, v in _PARAM.findall(body)}))]


_INVOKE = re.compile(r"<invoke name=\"([^\"]+)\">(.*?)</invoke>", re.S)
_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _hermes_or_glm(body: str) -> list[ParsedCall] | None:
    """`<tool_call>` holds JSON (Hermes, Qwen) or GLM's `name<arg_key>k</arg_key><arg_value>v</arg_value>`."""
    calls = _json_calls(body)
    if calls is not None:
        return calls
    name, _, rest = body.strip().partition("\n")
    if "<arg_key>" in name:
        name, rest = name.split("<arg_key>", 1)[0], body.strip()[len(name.split("<arg_key>", 1)[0]):]
    name = name.strip()
    if not re.fullmatch(r"[\w.\-]+", name):  # (an empty body is no call)
        return None
    return [ParsedCall(name, json.dumps({k.strip(): _value(v) for k, v in _GLM_ARG.findall(rest)}))]


_GEMMA_ESC = "<escape>"


def _gemma(body: str, name: str) -> list[ParsedCall] | None:
    """FunctionGemma `call:name{k:<escape>v<escape>,n:3}` (the body is what follows the name)."""
    body = body.strip()
    if not (body.startswith("{") and body.endswith("}")):
        return None
    inner, args = body[1:-1], {}
    while inner.strip():
        key, sep, inner = inner.partition(":")
        if not sep:
            return None
        inner = inner.lstrip()
        if inner.startswith(_GEMMA_ESC):
            value, _, inner = inner[len(_GEMMA_ESC):].partition(_GEMMA_ESC)
            args[key.strip().strip(",").strip()] = value
        else:
            value, _, inner = inner.partition(",")
            args[key.strip().strip(",").strip()] = _value(value)
        inner = inner.lstrip(", ")
    return [ParsedCall(name, json.dumps(args))]


def _deepseek(body: str) -> list[ParsedCall] | None:
    """DeepSeek `function<｜tool▁sep｜>name\n```json\n{...}\n```` inside call begin/end markers."""
    _, sep, rest = body.partition("<｜tool▁sep｜>")
    if not sep:
        return None
    name, _, args = rest.partition("\n")
    args = args.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        return [ParsedCall(name.strip(), json.dumps(json.loads(args or "{}")))]
    except json.JSONDecodeError:
        return None


def _invoke_xml(body: str) -> list[ParsedCall] | None:
    calls = [ParsedCall(n, json.dumps({k: _value(v) for k, v in _PARAM.findall(b)})) for n, b in _INVOKE.findall(body)]
    return calls or None


@dataclass(frozen=True)
class Family:
    start: str  # a literal, or a regex when it starts with "re:"
    end: str
    read: object  # (body, match) -> list[ParsedCall] | None


FAMILIES = [
    Family("<tool_call>", "</tool_call>", lambda b, mt: _hermes_or_glm(b)),
    Family("<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", lambda b, mt: _deepseek(b)),
    Family("<start_function_call>call:", "<end_function_call>",
           lambda b, mt: _gemma(b[len(b.split("{", 1)[0]):], b.split("{", 1)[0].strip())),
    Family("<|python_tag|>", "", lambda b, mt: _json_calls(b)),  # Llama 3.x: to the end of output
    Family("<|tool_call|>", "<|/tool_call|>", lambda b, mt: _json_calls(b)),
    Family("<tool>", "</tool>", lambda b, mt: _json_calls(b)),
    Family("[TOOL_CALLS]", "", lambda b, mt: _json_calls(b)),  # runs to the end of the output
    Family("re:<function=([^>]+)>", "</function>", lambda b, mt: _function_xml(b, mt.group(1))),
    Family("re:<([A-Za-z_]+):tool_call>", "re:</{ns}:tool_call>", lambda b, mt: _invoke_xml(b)),
]
# Family names, for choosing by template or by setting.
NAMES = {"hermes": 0, "glm": 0, "deepseek": 1, "gemma": 2, "llama": 3, "marker": 4, "tool": 5, "mistral": 6,
         "function": 7, "namespaced": 8}
_TEMPLATE_HINTS = [("<tool_call>", "hermes"), ("tool▁call", "deepseek"), ("start_function_call", "gemma"),
                   ("<|python_tag|>", "llama"), ("<|tool_call|>", "marker"), ("[TOOL_CALLS]", "mistral"),
                   ("<function=", "function"), (":tool_call>", "namespaced")]


def families_for(template: str | None, setting: str = "auto") -> list[Family]:
    """The families to parse for a model: named in settings ("hermes,mistral"), or "auto": the
    ones its chat template mentions, or every family when it mentions none."""
    if setting and setting != "auto":
        unknown = [n for n in setting.split(",") if n.strip() not in NAMES]
        if unknown:
            raise ValueError(f"unknown tool parser {unknown[0]!r}; known: {', '.join(sorted(NAMES))}")
        return [FAMILIES[i] for i in sorted({NAMES[n.strip()] for n in setting.split(",")})]
    found = sorted({NAMES[name] for hint, name in _TEMPLATE_HINTS if hint in (template or "")})
    return [FAMILIES[i] for i in found] if found else FAMILIES


_LITERAL_PREFIXES = ["<tool_call>", "<|tool_call|>", "<tool>", "[TOOL_CALLS]", "<function=", "<｜tool▁call▁begin｜>",
                     "<start_function_call>call:", "<|python_tag|>", "<"]
# Wrappers around a family's calls that carry nothing themselves.
_WRAPPERS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")


class ToolCallParser:
    """feed(text) -> (content to show, finished calls); finish() flushes at the end."""

    def __init__(self, families: list[Family] = FAMILIES):
        self.families = families
        self.buf = ""
        # A reply that opens with "{" may be one bare JSON tool call (Llama 3.x): decided at the end.
        self.bare_json: bool | None = None if FAMILIES[3] in families else False
        self.open: tuple[Family, re.Match | None, str] | None = None  # family, start match, end marker
        self.calls = 0

    def _find_start(self):
        best = None
        for fam in self.families:
            if fam.start.startswith("re:"):
                mt = re.search(fam.start[3:], self.buf)
                pos = (mt.start(), mt.end(), mt) if mt else None
            else:
                i = self.buf.find(fam.start)
                pos = (i, i + len(fam.start), None) if i >= 0 else None
            if pos and (best is None or pos[0] < best[1][0]):
                best = (fam, pos)
        return best

    def _hold(self) -> int:
        """Length of the tail that could still grow into a start marker."""
        i = self.buf.rfind("<")
        j = self.buf.rfind("[")
        cut = max(i, j)
        if cut < 0:
            return 0
        tail = self.buf[cut:]
        if len(tail) > 40:
            return 0
        partial_literal = any(p.startswith(tail) for p in (*_LITERAL_PREFIXES[:-1], *_WRAPPERS))
        open_name = tail.startswith("<function=") and ">" not in tail  # the name runs to ">"
        if partial_literal or open_name or re.match(r"<[A-Za-z_]*:?[a-z_]*$", tail):
            return len(self.buf) - cut
        return 0

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self.buf += text
        for w in _WRAPPERS:
            self.buf = self.buf.replace(w, "")
        if self.bare_json is None and self.buf.strip():
            self.bare_json = self.buf.lstrip().startswith("{")
        if self.bare_json:  # decided at the end (Llama 3.x JSON calls have no markers)
            return "", []
        content, calls = [], []
        while True:
            if self.open is None:
                found = self._find_start()
                if found is None:
                    keep = self._hold()
                    content.append(self.buf[: len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    break
                fam, (s, e, mt) = found
                content.append(self.buf[:s])
                end = fam.end
                if end.startswith("re:"):
                    end = end[3:].replace("{ns}", mt.group(1))
                    end = re.sub(r"\\", "", end)
                self.open = (fam, mt, end)
                self.buf = self.buf[e:]
            fam, mt, end = self.open
            if not end:  # runs to the end of output
                break
            i = self.buf.find(end)
            if i < 0:
                break
            body, self.buf = self.buf[:i], self.buf[i + len(end):]
            parsed = fam.read(body, mt)
            self.open = None
            if parsed is None:
                content.append(self._raw(fam, mt, body, end))
            else:
                calls += parsed
        self.calls += len(calls)
        return "".join(content), calls

    @staticmethod
    def _raw(fam, mt, body, end) -> str:
        start = mt.group(0) if mt is not None else fam.start
        return start + body + end

    def finish(self, cut: bool = False) -> tuple[str, list[ParsedCall]]:
        """The end of the output. cut: it ended at max_tokens, so an unfinished call is still a
        call (incomplete, with the arguments so far), never markup in the content."""
        if self.bare_json:
            self.bare_json = False
            parsed = _json_calls(self.buf)
            if parsed is None and cut and _NAME.search(self.buf):
                parsed = [_partial(self.buf, None, None)]
            if parsed is not None:
                self.buf = ""
                self.calls += len(parsed)
                return "", parsed
            content, calls = self.feed("")
            more, tail = self.finish(cut)
            return content + more, calls + tail
        if self.open is None:
            out, self.buf = self.buf, ""
            if cut and len(out) > 1 and any(p.startswith(out) for p in (*_LITERAL_PREFIXES[:-1], *_WRAPPERS)):
                out = ""  # the start of a marker the cut never finished
            return out, []
        fam, mt, end = self.open
        body, self.buf, self.open = self.buf, "", None
        parsed = fam.read(body, mt)
        if parsed is None:
            if not cut:
                return self._raw(fam, mt, body, ""), []
            parsed = [_partial(body, fam, mt)]
        self.calls += len(parsed)
        return "", parsed


_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*', re.S)


def _partial(body: str, fam: Family | None, mt: re.Match | None) -> ParsedCall:
    """A call cut off by max_tokens: its name if it got that far, and the arguments so far."""
    name = ""
    if mt is not None and mt.groups() and fam is FAMILIES[7]:  # <function=name>
        name = mt.group(1)
        stripped = body.strip()
        args = stripped if stripped.startswith("{") else json.dumps({k: _value(v) for k, v in _PARAM.findall(body)})
        return ParsedCall(name, args, incomplete=True)
    invoke = re.search(r'<invoke name="([^"]+)"', body)
    if invoke:
        return ParsedCall(invoke.group(1), json.dumps({k: _value(v) for k, v in _PARAM.findall(body)}), incomplete=True)
    found = _NAME.search(body)
    if found:
        try:
            name = json.loads(f'"{found.group(1)}"')
        except json.JSONDecodeError:
            name = found.group(1)
    args = _ARGS.search(body)
    return ParsedCall(name, body[args.end():].strip() if args else "", incomplete=True)
