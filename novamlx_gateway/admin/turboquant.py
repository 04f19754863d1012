"""GET/PUT /admin/api/turboquant: KV-cache quantization per model (the spec's TurboQuant).

GET shows, per model, the KV format in effect (its own kv_bits setting, or the server's
--kv-bits default), what a cached token costs, and a recommendation: the fewest bits' loss
that lets four full-context sequences fit the KV budget (none when they fit unquantized).
PUT {"model": id, "kv_bits": 4, "kv_group_size": 64} stores the model's setting (null clears
it) and the worker applies it at the model's next idle moment.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import APIError
from .common import json_body, worker_settings

COMPRESSION = {2: 8.0, 3: 5.33, 4: 4.0, 6: 2.67, 8: 2.0}  # against 16-bit KV, the spec's table
ROOM_FOR = 4  # full-context sequences the recommendation makes room for


def recommend(plain_per_token: int, context: int, kv_budget: int) -> dict:
    need = plain_per_token * context * ROOM_FOR
    if kv_budget <= 0 or need <= kv_budget:
        return {"kv_bits": 0, "reason": f"{ROOM_FOR} sequences of {context} tokens fit unquantized"}
    ratio = need / kv_budget
    for bits in (8, 6, 4, 3, 2):
        if COMPRESSION[bits] >= ratio:
            return {"kv_bits": bits, "kv_group_size": 64,
                    "reason": f"{ROOM_FOR} sequences of {context} tokens need {ratio:.1f}x the KV budget"}
    return {"kv_bits": 2, "kv_group_size": 64,
            "reason": f"even 2-bit KV leaves room for fewer than {ROOM_FOR} full-context sequences"}


async def turboquant(request: Request):
    worker, cfg = request.app.state.worker, request.app.state.config
    if request.method == "PUT":
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise APIError(400, 'Send {"model": ID, "kv_bits": 2|3|4|6|8|null, "kv_group_size": 32|64|128}.',
                           "invalid_value", "model")
        info = worker.resolve_model(body["model"])
        if info is None or info.kind not in ("llm", "vlm"):
            raise APIError(404, f"No generating model '{body['model']}'.", "model_not_found", "model")
        changes = {k: body[k] for k in ("kv_bits", "kv_group_size") if k in body}
        worker.settings.update(info.id, changes)
        await request.app.state.catalog.push_policies()
    state = await worker_settings(request)
    models = []
    for info in worker.models:
        if info.kind not in ("llm", "vlm"):
            continue
        s = worker.settings.get(info.id)
        row = {"id": info.id, "loaded": info.loaded, "source": "setting" if s.get("kv_bits") else "default",
               "kv_bits": s.get("kv_bits") or cfg.kv_bits, "kv_group_size": s.get("kv_group_size") or cfg.kv_group_size}
        live = state.get("kv", {}).get(info.id)
        if live is not None:  # loaded: what the worker runs, and a recommendation from its real sizes
            row.update(kv_bits=live["kv_bits"], kv_group_size=live["kv_group_size"],
                       bytes_per_token=live["bytes_per_token"], plain_bytes_per_token=live["plain_bytes_per_token"],
                       recommended=recommend(live["plain_bytes_per_token"], live["context_length"],
                                             state["kv_budget_bytes"]))
        models.append(row)
    return JSONResponse({"enabled": any(r["kv_bits"] for r in models),
                         "default": {"kv_bits": cfg.kv_bits, "kv_group_size": cfg.kv_group_size},
                         "bits": {str(b): {"compression": c} for b, c in COMPRESSION.items()},
                         "group_sizes": [32, 64, 128], "kv_budget_bytes": state["kv_budget_bytes"], "models": models})
