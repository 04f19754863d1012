"""Scheduling policy, no tensors: who starts now, who is preempted to make room.

Waiting requests are taken by priority (high first), then arrival. A request starts when a
batch slot and its KV reservation are free. If not, running requests of strictly lower
priority are preempted (lowest priority, newest first) when that makes room; their KV goes
to the prefix cache and they resume later. A request that cannot start blocks those behind
it, so equal-priority work is served in order and nothing starves behind a stream of
smaller requests.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    id: str
    priority: int
    arrival: float
    kv_bytes: int


@dataclass
class Plan:
    admit: list[str]
    preempt: list[str]


def plan(waiting: list[Item], running: list[Item], max_running: int, kv_budget: int, kv_used: int) -> Plan:
    admit: list[str] = []
    preempt: list[str] = []
    slots = max_running - len(running)
    free = kv_budget - kv_used
    victims = sorted(running, key=lambda r: (r.priority, -r.arrival))
    for c in sorted(waiting, key=lambda c: (c.priority * -1, c.arrival)):
        # An idle engine always takes the first request: admission checked it fits the whole budget.
        alone = not running and not admit and not preempt
        if slots >= 1 and (c.kv_bytes <= free or alone):
            admit.append(c.id)
            slots -= 1
            free -= c.kv_bytes
            continue
        chosen, gained_slots, gained_kv = [], 0, 0
        for v in victims:
            if v.priority >= c.priority:
                break
            chosen.append(v)
            gained_slots += 1
            gained_kv += v.kv_bytes
            if slots + gained_slots >= 1 and free + gained_kv >= c.kv_bytes:
                break
        if chosen and slots + gained_slots >= 1 and free + gained_kv >= c.kv_bytes:
            preempt += [v.id for v in chosen]
            victims = [v for v in victims if v not in chosen]
            slots += gained_slots - 1
            free += gained_kv - c.kv_bytes
            admit.append(c.id)
        else:
            break
    return Plan(admit, preempt)
