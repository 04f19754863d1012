"""Scheduling policy, no tensors: who starts now, who is preempted to make room.

Waiting requests are taken by priority (high first), then arrival. A request starts when a
batch slot and its KV reservation are free. What a set of running requests costs is the
engine's rule (`cost`): batched rows of one model share slot buffers sized for the longest
row, so the cost is not a plain sum. If not, running requests of strictly lower
priority are preempted (lowest priority, newest first) when that makes room; their KV goes
to the prefix cache and they resume later. A request that cannot start blocks those behind
it, so equal-priority work is served in order and nothing starves behind a stream of
smaller requests.
"""
from __future__ import annotations

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
