"""Scheduling policy, no tensors: who starts now, who is preempted to make room.

Waiting requests are taken by priority (high first), then arrival. A request starts when a
batch slot and its KV reservation are free. What a set of running requests costs is the
engine's rule (`cost`): batched rows of one model share slot buffers sized for the longest
row, so the cost is not a plain sum. If not, running requests of strictly lower
priority are preempted (lowest priority, newest first) when that makes room; their KV goes
to the prefix cache and they resume later. A request that cannot start blocks those behind
it, so equal-priority work is served in order and nothing starves behind a stream of
smaller requests. `plan` is pure policy; `Scheduler` keeps the queues it decides over.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Item:
    id: str
    priority: int
    arrival: float
    kv_bytes: int  # its own KV at its longest (prompt + max_tokens)
    model: str = ""


def summed(items: list[Item]) -> int:
    return sum(i.kv_bytes for i in items)


@dataclass
class Plan:
    admit: list[str]
    preempt: list[str]


def plan(waiting: list[Item], running: list[Item], max_running: int, kv_budget: int,
         cost: Callable[[list[Item]], int] = summed) -> Plan:
    admit: list[str] = []
    preempt: list[str] = []
    kept = list(running)  # what will run: the running minus the preempted, plus the admitted
    victims = sorted(running, key=lambda r: (r.priority, -r.arrival))

    def fits(rows: list[Item]) -> bool:
        return len(rows) <= max_running and cost(rows) <= kv_budget

    for c in sorted(waiting, key=lambda c: (c.priority * -1, c.arrival)):
        # An idle engine always takes the first request: admission checked it fits the whole budget.
        alone = not kept
        if alone or fits(kept + [c]):
            admit.append(c.id)
            kept.append(c)
            continue
        chosen: list[Item] = []
        for v in victims:
            if v.priority >= c.priority:
                break
            chosen.append(v)
            if fits([k for k in kept if k not in chosen] + [c]):
                break
        rest = [k for k in kept if k not in chosen]
        if chosen and fits(rest + [c]):
            preempt += [v.id for v in chosen]
            victims = [v for v in victims if v not in chosen]
            kept = rest + [c]
            admit.append(c.id)
        else:
            break
    return Plan(admit, preempt)


class Scheduler:
    """The queues around `plan`: who waits, who runs (by model and row id), how much KV the
    running rows reserve; rows go into decode paths reusing cached prefixes, and come out
    leaving their KV to the prefix cache. `models` holds the decode paths and prefix caches."""

    def __init__(self, models, max_batch: int, prefill_batch: int, kv_budget: Callable[[], int],
                 kv_cost: Callable[[list[Item]], int], counters: dict, sessions=None):
        self.models = models
        self.sessions = sessions  # a row naming a session starts from its state and leaves its own there
        self.max_batch, self.prefill_batch = max_batch, prefill_batch
        self.kv_budget, self.kv_cost = kv_budget, kv_cost
        self.counters = counters
        self.waiting: list = []  # accepted Sequences not in a decode path (new or preempted)
        self.by_rid: dict[tuple[str, int], object] = {}  # running Sequences by (model, row id)
        self.kv_reserved = 0
        # Off by default: on the H100 run gathering 5 ms halved 128-stream throughput (2,185 -> 1,133 tok/s).
        self.gather_s = float(os.environ.get("NOVAMLX_GATHER_MS", "0")) / 1000

    def running(self) -> list:
        return list(self.by_rid.values())

    def schedule(self) -> None:
        if not self.waiting:
            return
        running = self.running()
        if running and self.gather_s > 0 and len(self.waiting) < self.prefill_batch:
            # While others decode, let a burst of arrivals gather for a few ms so their prompts are
            # prefilled together: fewer, larger prefill batches (and fewer new shapes to compile).
            newest = max(s.submitted for s in self.waiting)
            if time.monotonic() - newest < self.gather_s:
                return
        item = lambda s: Item(s.id, s.priority, s.submitted, s.kv_bytes, s.model_id)  # noqa: E731
        decided = plan([item(s) for s in self.waiting], [item(s) for s in running], self.max_batch,
                       self.kv_budget(), self.kv_cost)
        by_id = {s.id: s for s in self.waiting + running}
        for rid in decided.preempt:
            self.preempt(by_id[rid])
        for rid in decided.admit:
            self.start(by_id[rid])

    def start(self, seq) -> None:
        """Into its decode path, reusing the longest cached prefix of everything it has seen."""
        self.waiting.remove(seq)
        pc = self.models.caches.get(seq.model_id)
        kv = None
        if seq.session and self.sessions is not None:
            restored, kv = self.sessions.start(seq.session, seq.model_id, seq.tokens)
            if kv is not None and seq.preemptions == 0:
                seq.cached_tokens = restored
        if pc is not None and kv is None:
            seq.blocks = pc.match(seq.tokens)
            if seq.blocks:
                pc.acquire(seq.blocks)
                kv = pc.build(seq.blocks)
                if seq.preemptions == 0:
                    seq.cached_tokens = len(seq.blocks) * pc.block_size
        seq.rid = self.models.runners[seq.model_id].add(seq, kv)
        self.by_rid[(seq.model_id, seq.rid)] = seq
        self.kv_reserved += seq.kv_bytes
        if seq.preemptions == 0:
            self.counters["started"] += 1
            self.counters["wait_s_total"] += time.monotonic() - seq.submitted
        self.counters["peak_active"] = max(self.counters["peak_active"], len(self.by_rid))

    def dropped(self, seq) -> None:
        """Its decode path already let the row go (it finished there, or the path failed)."""
        if seq.rid is not None:
            self.by_rid.pop((seq.model_id, seq.rid), None)
            seq.rid = None

    def remove(self, seq, kv: list | None = None) -> None:
        """Out of the queue or out of its decode path: its KV goes to the prefix cache, its
        reservations are released."""
        if any(w is seq for w in self.waiting):
            self.waiting.remove(seq)
            return
        if seq.rid is not None:
            removed = self.models.runners[seq.model_id].remove(seq.rid)
            kv = kv or removed
            self.dropped(seq)
        self.kv_reserved -= seq.kv_bytes
        if seq.session and self.sessions is not None:
            self.sessions.end(seq.session, seq.model_id, seq.tokens, kv)
        pc = self.models.caches.get(seq.model_id)
        if pc is not None:
            if kv and seq.generated > 0:  # only decode-stage KV is whole and unpadded
                pc.store(seq.tokens, kv)
            pc.release(seq.blocks)
        seq.blocks = []

    def preempt(self, seq) -> None:
        self.remove(seq)
        seq.preemptions += 1
        self.counters["preempted"] += 1
        self.waiting.append(seq)
