"""The engine's numbers for the health push and the Stats command.

Read from the health thread while the engine thread runs: every collection is copied before
it is walked (snapshots, not live views).
"""
from __future__ import annotations


def engine_stats(engine) -> dict:
    c = dict(engine.counters)
    active = len(engine.scheduler.by_rid)
    models = engine.models
    out = {"active": active, "queue_depth": len(engine.scheduler.waiting), "total_queued": c["queued"],
           "total_completed": c["completed"], "total_preempted": c["preempted"], "total_aborted": c["aborted"],
           "total_failed": c["failed"], "jobs": len(engine.jobs.queue),
           "peak_active": c["peak_active"], "avg_wait_s": round(c["wait_s_total"] / max(c["started"], 1), 4),
           "max_batch": engine.scheduler.max_batch,
           # where the engine thread's time goes: inside the runners (forwards, waiting on the
           # device) vs the whole step (plus detokenizing, stops, parsers, the Step line)
           "runner_s": round(c["runner_s"], 3), "runner_calls": c["runner_calls"], "step_s": round(c["step_s"], 3),
           "batches": {mid: r.info() for mid, r in list(models.runners.items())}}
    cache = {mid: pc.snapshot() for mid, pc in list(models.caches.items())}
    cache["vision_features"] = models.pool.features.stats()
    for e in list(models.pool.entries.values()):
        lm = e.loaded
        if lm is not None and lm.vision is not None:
            cache[lm.id] = lm.vision.prompts.stats()
    ssd = models.ssd
    if ssd is not None:
        cache["ssd"] = {"blocks": len(ssd.index), "bytes": ssd.bytes, "reads": ssd.reads, "writes": ssd.writes,
                        "corrupt_dropped": ssd.corrupt}
    return {"engine": out, "prefix_cache": cache}
