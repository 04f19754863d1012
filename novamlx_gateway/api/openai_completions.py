"""POST /v1/completions: the legacy text completions wire format <-> protocol."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from protocol import messages as m

from .. import sse
from .cloud_proxy import passthrough
from ..errors import APIError
from ..generation import Generation
from .common import parse_body, priority_of
from .generate_args import COMPLETIONS, GenerateArgs, start_generation
from .openai_chat import finish_reason
from .openai_schema import CompletionRequest, check_stream_options, sampling_fields, texts_or_tokens


def _prompts(req: CompletionRequest) -> list[dict]:
    p = req.prompt
    if p is None or p == "" or p == []:
        raise APIError(400, "Invalid 'prompt': a prompt is required.", "missing_required_parameter", "prompt")
    kind, items = texts_or_tokens(p, "prompt")
    key = "prompt" if kind == "texts" else "prompt_tokens"
    return [{key: x} for x in items]


class LegacyLogprobs:
    """The completions `logprobs` object: parallel lists, offsets into the choice text.
    The echoed first prompt token has no logprob: null, as OpenAI sends it."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.obj = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, entries: list[m.TokenLogprob]) -> dict:
        start = len(self.obj["tokens"])
        for e in entries:
            self.obj["tokens"].append(e.token)
            self.obj["token_logprobs"].append(e.logprob)
            self.obj["top_logprobs"].append(None if e.logprob is None else {t.token: t.logprob for t in e.top})
            self.obj["text_offset"].append(self.offset)
            self.offset += len(e.token)
        return {k: v[start:] for k, v in self.obj.items()}


async def completions(request: Request):
    req: CompletionRequest = await parse_body(request, CompletionRequest)
    if req.model in request.app.state.cloud:
        return await passthrough(request, request.app.state.cloud[req.model], "/completions")
    check_stream_options(req)
    fields = sampling_fields(req)
    if req.best_of is not None and req.best_of != fields["n"]:
        raise APIError(400, "Invalid 'best_of': only best_of equal to n is supported.", "invalid_value", "best_of")
    if req.suffix:
        raise APIError(400, "Invalid 'suffix': insertion (suffix) is not supported by this model.", "invalid_value", "suffix")
    top = req.logprobs
    if top is not None and not 0 <= top <= 5:
        raise APIError(400, f"Invalid 'logprobs': {top} is not within [0, 5].", "invalid_value", "logprobs")
    # The legacy API's default is 16 tokens (unless the model's settings say otherwise).
    args = GenerateArgs(req.model, prompts=_prompts(req), **fields, max_tokens=req.max_tokens, route_max_tokens=16,
                        logprobs=top is not None, top_logprobs=top or 0, echo=req.echo,
                        priority=priority_of(request, req.priority))
    base = Generation.new_id()
    info, gen = await start_generation(request, args, COMPLETIONS, base)
    rid = f"cmpl-{base}"
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_stream(gen, rid, info.id, include_usage, top is not None),
                                 media_type="text/event-stream", headers=sse.SSE_HEADERS)
    choices = await gen.collect()
    out = []
    for i, c in enumerate(choices):
        lp = LegacyLogprobs().add(c.logprobs) if top is not None else None
        out.append({"text": "".join(c.text), "index": i, "logprobs": lp,
                    "finish_reason": finish_reason(c.finish_reason)})
    return JSONResponse({"id": rid, "object": "text_completion", "created": gen.created, "model": info.id,
                         "system_fingerprint": f"fp_novamlx_{info.id[:16]}",
                         "choices": out, "usage": gen.usage()})


async def _stream(gen: Generation, rid: str, model: str, include_usage: bool, logprobs: bool):
    def chunk(choices, usage=None):
        obj = {"id": rid, "object": "text_completion", "created": gen.created, "model": model,
               "system_fingerprint": f"fp_novamlx_{model[:16]}", "choices": choices}
        if include_usage:
            obj["usage"] = usage
        return sse.data(obj)

    trackers = [LegacyLogprobs() for _ in gen.cmds]
    try:
        async for i, ev in gen.events():
            if isinstance(ev, m.Delta):
                lp = trackers[i].add(ev.logprobs or []) if logprobs else None
                yield chunk([{"text": ev.text, "index": i, "logprobs": lp, "finish_reason": None}])
            elif isinstance(ev, m.Finished):
                yield chunk([{"text": "", "index": i, "logprobs": None, "finish_reason": finish_reason(ev.finish_reason)}])
            elif isinstance(ev, m.Error):
                yield sse.data(gen.error(ev).body())
                return
        if include_usage:
            yield chunk([], gen.usage())
        yield sse.DONE
    except APIError as e:
        yield sse.data(e.body())
    finally:
        gen.abort()
