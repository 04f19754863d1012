"""Backpressure: at most N requests running, a bounded queue behind them, then 429."""
from __future__ import annotations

import asyncio
from collections import deque

from .errors import APIError


class Admission:
    def __init__(self, max_running: int, max_queue: int):
        self.max_running = max_running
        self.max_queue = max_queue
        self.running = 0
        self.waiters: deque[asyncio.Future] = deque()
        self.rejected = 0

    @property
    def queued(self) -> int:
        return len(self.waiters)

    async def acquire(self, timeout: float) -> None:
        if self.running < self.max_running and not self.waiters:
            self.running += 1
            return
        if len(self.waiters) >= self.max_queue:
            self.rejected += 1
            raise APIError(429, f"The server is busy: {self.running} requests running and {len(self.waiters)} queued. "
                                "Retry after a short wait.", "rate_limit_exceeded", headers={"retry-after": "1"})
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if fut in self.waiters:
                self.waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we gave up
            if isinstance(e, asyncio.TimeoutError):
                raise APIError(504, f"The request waited {timeout:.0f} s in the queue and timed out.", "timeout") from None
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # hand the slot over: running stays the same
                return
        self.running -= 1
