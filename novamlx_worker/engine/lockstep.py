"""Keeps the ranks of a sharded model in step: rank 0 decides, the others follow.

Every rank runs the same engine over the same model shards; a tensor-parallel forward is a
collective, so all ranks must run the same forwards in the same order. Once per loop
iteration rank 0 shares the commands it took from the gateway (the others never read the
pipe) and every rank handles exactly those, so schedules, batches and prefix-cache
decisions stay identical. Requests without a seed get one from rank 0: every rank must
sample the same token. Nothing here is a communication layer of our own: the bytes travel
through mlx.distributed collectives (ring, MPI or NCCL, whatever the group runs on).
"""
from __future__ import annotations

import os
import queue
import random
import time

import mlx.core as mx
import msgspec
import numpy as np
import psutil

from protocol import codec
from protocol import messages as m


# Decode iterations between two command exchanges among the ranks.
SHARE_EVERY = int(os.environ.get("NOVAMLX_SHARE_EVERY", "8"))


class Lockstep:
    def __init__(self, group):
        self.group = group
        self.rank, self.size = group.rank(), group.size()
        self.rank_memory: list[int] = [0] * self.size  # RSS of each rank, refreshed about once a second
        self.want_memory = False
        self.iterations = 0
        self.next_memory_gather = 0.0

    def commands(self, inbox: queue.Queue, decoding: bool, streams=()) -> list:
        """The commands every rank handles this iteration: rank 0 takes them from the pipe.
        While sequences decode, commands are shared every SHARE_EVERY iterations only: sharing
        waits for the queued forward, so doing it each step would undo the overlap of one step's
        Python with the next step's compute (on 2 H100s: 63 tok/s instead of 148 at one stream).
        Every rank skips the same iterations: their state is the same.
        (Memory eviction and TTL unloads are off here: they would need a decision all ranks share.)"""
        self.iterations += 1
        if decoding and self.iterations % SHARE_EVERY:
            return []
        cmds = []
        if self.rank == 0:
            try:
                cmds.append(inbox.get(timeout=0.5) if not decoding else inbox.get_nowait())
                while True:
                    cmds.append(inbox.get_nowait())
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= self.next_memory_gather:
                self.want_memory, self.next_memory_gather = True, now + 1.0
        return self.share(cmds, streams)

    def _sum(self, a: mx.array) -> mx.array:
        # On the default device: NCCL groups reduce GPU arrays, ring and MPI CPU ones.
        out = mx.distributed.all_sum(a, group=self.group)
        mx.eval(out)
        return out

    def share(self, cmds: list, streams=()) -> list:
        """Rank 0's commands, on every rank (a collective: all ranks call it each iteration).
        streams: the runners' generation streams. Their queued forwards hold collectives of
        their own; they must finish first, or the ranks could meet in different collectives."""
        for s in streams:
            mx.synchronize(s)
        if self.rank == 0:
            for c in cmds:
                if isinstance(c, m.Generate) and c.sampling.seed is None:
                    c.sampling = msgspec.structs.replace(c.sampling, seed=random.getrandbits(62))
            data = b"".join(codec.encode(c) for c in cmds)
        else:
            data = b""
        head = self._sum(mx.array([len(data), int(self.want_memory and self.rank == 0)], dtype=mx.int32))
        n, memory = int(head[0].item()), bool(head[1].item())
        if memory:
            self._gather_memory()
        if n == 0:
            return []
        buf = np.frombuffer(data, dtype=np.uint8) if self.rank == 0 else np.zeros(n, dtype=np.uint8)
        got = bytes(np.array(self._sum(mx.array(buf.astype(np.int32)))).astype(np.uint8))
        if self.rank == 0:
            return cmds
        return [codec.decode_command(line) for line in got.splitlines() if line.strip()]

    def _gather_memory(self) -> None:
        mine = mx.array([psutil.Process().memory_info().rss // 1024], dtype=mx.int32)  # KiB: int32 is enough
        every = mx.distributed.all_gather(mine, group=self.group)
        mx.eval(every)
        self.rank_memory = [int(v) * 1024 for v in np.array(every).reshape(-1)]
        self.want_memory = False
