"""The KV budget: what the memory limit leaves for KV caches after the weights, and what a set
of running rows costs as their decode paths hold it."""
from __future__ import annotations

from ..memory import MemoryEnforcer
from ..models.pool import ModelPool, weight_bytes
from .errors import RequestError
from .scheduler import Item

# Memory the process needs besides weights and KV (Python, MLX scratch, activations).
OVERHEAD_BYTES = 512 * 1024**2


def kv_budget(memory: MemoryEnforcer, pool: ModelPool, cap: int = 0) -> int:
    weights = sum(weight_bytes(lm) for lm in pool.loaded())
    budget = max(memory.limit - weights - OVERHEAD_BYTES, 0)
    return min(budget, cap) if cap else budget


def kv_cost(items: list[Item], runners: dict) -> int:
    """KV bytes a set of running sequences holds at most, per model as its decode path holds
    them (a slot batch sizes every slot for its longest row; other paths hold each row's own)."""
    by_model: dict[str, list[int]] = {}
    for i in items:
        by_model.setdefault(i.model, []).append(i.kv_bytes)
    total = 0
    for mid, kv in by_model.items():
        runner = runners.get(mid)
        total += runner.kv_cost(kv) if runner is not None else sum(kv)
    return total


def over_memory(memory: MemoryEnforcer) -> RequestError:
    st = memory.state()
    return RequestError(f"The server is out of memory: the process uses {st['used_bytes'] / 1024**3:.2f} GB of its "
                        f"{st['limit_bytes'] / 1024**3:.2f} GB limit ({st['mode']}). Retry later.", "out_of_memory")
