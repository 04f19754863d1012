"""Scheduling policy: priorities, KV budget, preemption (no model needed)."""
from novamlx_worker.engine.scheduler import Item, plan


def it(i, prio=0, t=0.0, kv=10):
    return Item(i, prio, t, kv)


def test_fifo_within_budget_and_slots():
    p = plan([it("a", t=1), it("b", t=2), it("c", t=3)], [], max_running=2, kv_budget=100)
    assert p.admit == ["a", "b"] and p.preempt == []


def test_priority_first_then_arrival():
    p = plan([it("a", 0, 1), it("b", 1, 2), it("c", -1, 0)], [], max_running=2, kv_budget=100)
    assert p.admit == ["b", "a"]


def test_waits_for_kv_and_blocks_the_line():
    p = plan([it("big", t=1, kv=80), it("small", t=2, kv=5)], [it("r", kv=50)], 8, kv_budget=100)
    assert p.admit == [] and p.preempt == []  # small does not jump ahead of big


def test_idle_engine_takes_the_first_request():
    p = plan([it("a", kv=500)], [], 8, kv_budget=100)
    assert p.admit == ["a"]


def test_high_priority_preempts_lowest_newest():
    running = [it("low_old", -1, 1), it("low_new", -1, 2), it("norm", 0, 0)]
    p = plan([it("vip", 1, 5)], running, max_running=3, kv_budget=100)
    assert p.preempt == ["low_new"] and p.admit == ["vip"]


def test_no_preemption_of_equal_priority():
    p = plan([it("x", 0, 5)], [it("y", 0, 1)], max_running=1, kv_budget=100)
    assert p.admit == [] and p.preempt == []


def test_padded_cost_holds_a_long_request_until_the_batch_is_small_enough():
    """Rows of one model share slot buffers sized for the longest: four short rows and a long
    one cost 8 slots x the long row's KV, not the sum."""
    def padded(items):
        n = len(items)
        slots = 1 << (n - 1).bit_length() if n else 0
        return slots * max((i.kv_bytes for i in items), default=0)

    running = [it(f"s{i}", t=i, kv=10) for i in range(4)]
    p = plan([it("long", t=9, kv=100)], running, 8, kv_budget=500, cost=padded)
    assert p.admit == []  # 8 slots x 100 = 800 > 500, though the sum (140) fits
    p = plan([it("long", t=9, kv=100)], running[:3], 8, kv_budget=500, cost=padded)
    assert p.admit == ["long"]  # 4 slots x 100 = 400
