"""Block-hashed prefix cache.

A prompt is cut into fixed blocks (64 tokens by default). Each block's key chains the
parent block's hash, the model id and the block's token ids, so equal keys mean equal
prefixes. Blocks are immutable and reference counted; unreferenced ones form an LRU that
is trimmed to a byte budget, evicted blocks going to the SSD tier when there is one.
A request reuses the longest cached chain and prefills only the rest. Quantized KV (kv.py)
is kept quantized: a block holds each layer's parts (packed words, scales, biases), and the
format is part of the hash, so plain and quantized blocks never mix.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache, QuantizedKVCache

from .kv import ContiguousQuantizedKVCache, KVFormat, parts_of
from .ssd_cache import SSDTier

log = logging.getLogger("novamlx.prefix")


@dataclass(eq=False)
class Block:
    hash: str
    parent: str | None
    tokens: tuple[int, ...]
    keys: list[list[mx.array]]  # per layer, its parts (kv.py), each (1, kv_heads, block, ...)
    values: list[list[mx.array]]
    refs: int = 0

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for parts in self.keys + self.values for p in parts)


@dataclass
class CacheStats:
    hits: int = 0  # requests that reused at least one block
    misses: int = 0
    tokens_saved: int = 0
    evictions: int = 0
    ssd_hits: int = 0


def block_hash(parent: str | None, tokens, model_id: str) -> str:
    h = hashlib.sha1()
    h.update((parent or "root").encode())
    h.update(model_id.encode())
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.hexdigest()


def _to_numpy(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16)) if a.dtype == mx.bfloat16 else np.array(a)


def _from_numpy(a: np.ndarray, dtype: str) -> mx.array:
    x = mx.array(a)
    return x.view(mx.bfloat16) if dtype == "bfloat16" else x


class PrefixCache:
    def __init__(self, model_id: str, block_size: int = 64, max_bytes: int = 2 * 1024**3, ssd: SSDTier | None = None,
                 kv: KVFormat = KVFormat()):
        self.kv = kv
        # The hash covers the KV format: blocks of another format (a changed setting, an SSD file) never match.
        self.model_id = model_id if not kv.quantized else f"{model_id}|kv{kv.bits}g{kv.group_size}"
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.ssd = ssd
        self.blocks: OrderedDict[str, Block] = OrderedDict()  # LRU order among all blocks
        self.bytes = 0
        self.stats = CacheStats()

    # ---- lookup ----
    def hashes(self, tokens: list[int], limit: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
        n = len(tokens) // self.block_size if limit is None else min(limit, len(tokens) // self.block_size)
        out, parent = [], None
        for i in range(n):
            chunk = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            parent = block_hash(parent, chunk, self.model_id)
            out.append((parent, chunk))
        return out

    def match(self, tokens: list[int]) -> list[Block]:
        """The longest cached chain for these tokens, leaving at least one token to compute."""
        found: list[Block] = []
        parent = None
        for h, chunk in self.hashes(tokens, (len(tokens) - 1) // self.block_size):
            block = self.blocks.get(h) or self._from_ssd(h, parent, chunk)
            if block is None:
                break
            found.append(block)
            parent = h
        if found:
            self.stats.hits += 1
            self.stats.tokens_saved += len(found) * self.block_size
        else:
            self.stats.misses += 1
        return found

    def peek(self, tokens: list[int]) -> int:
        """How many tokens `match` would find cached now (memory or SSD), without loading or counting."""
        n = 0
        for h, _ in self.hashes(tokens, (len(tokens) - 1) // self.block_size):
            if h not in self.blocks and (self.ssd is None or h not in self.ssd):
                break
            n += 1
        return n * self.block_size

    def _from_ssd(self, h: str, parent: str | None, chunk) -> Block | None:
        if self.ssd is None or h not in self.ssd:
            return None
        got = self.ssd.get(h)
        if got is None:
            return None
        arrays, meta = got
        if tuple(meta["tokens"]) != chunk or meta.get("model") != self.model_id:
            return None
        n, parts = int(meta["layers"]), int(meta.get("parts", 1))
        dtypes = str(meta.get("dtypes") or meta["dtype"]).split(",")  # (file metadata is text)

        def load(kind: str, layer: int) -> list[mx.array]:
            if parts == 1 and f"{kind}{layer}" in arrays:  # one plain array (also what older files hold)
                return [_from_numpy(arrays[f"{kind}{layer}"], dtypes[0])]
            return [_from_numpy(arrays[f"{kind}{layer}_{j}"], dtypes[j]) for j in range(parts)]

        block = Block(h, parent, chunk, [load("k", i) for i in range(n)], [load("v", i) for i in range(n)])
        self._add(block)
        self.stats.ssd_hits += 1
        return block

    # ---- references ----
    def acquire(self, blocks: list[Block]) -> None:
        for b in blocks:
            b.refs += 1
            self.blocks.move_to_end(b.hash)

    def release(self, blocks: list[Block]) -> None:
        for b in blocks:
            b.refs -= 1
        self._trim()

    @property
    def referenced(self) -> int:
        return sum(1 for b in list(self.blocks.values()) if b.refs > 0)

    # ---- building and storing KV ----
    def build(self, blocks: list[Block]) -> list:
        """Fresh per-layer caches holding the blocks' keys and values, in order (quantized
        caches for a quantized format, as mlx-lm's QuantizedKVCache holds them)."""
        caches = []
        for layer in range(len(blocks[0].keys)):
            keys = [mx.concatenate([b.keys[layer][j] for b in blocks], axis=2) for j in range(len(blocks[0].keys[layer]))]
            values = [mx.concatenate([b.values[layer][j] for b in blocks], axis=2)
                      for j in range(len(blocks[0].values[layer]))]
            if self.kv.quantized:
                c = (ContiguousQuantizedKVCache if self.kv.contiguous else QuantizedKVCache)(
                    group_size=self.kv.group_size, bits=self.kv.bits)
                c.keys, c.values = tuple(keys), tuple(values)
            else:
                c = KVCache()
                c.keys, c.values = keys[0], values[0]
            c.offset = keys[0].shape[2]
            caches.append(c)
        return caches

    def store(self, tokens: list[int], caches: list) -> int:
        """Keep every full block of `tokens` (the tokens whose KV the caches hold). Returns new blocks."""
        n_cached = min(c.offset for c in caches)
        new, parent = [], None
        for i, (h, chunk) in enumerate(self.hashes(tokens[:n_cached])):
            if h in self.blocks:
                self.blocks.move_to_end(h)
            else:
                lo, hi = i * self.block_size, (i + 1) * self.block_size
                keys = [[mx.contiguous(p[..., lo:hi, :]) for p in parts_of(c.keys)] for c in caches]
                values = [[mx.contiguous(p[..., lo:hi, :]) for p in parts_of(c.values)] for c in caches]
                new.append(Block(h, parent, chunk, keys, values))
            parent = h
        if new:
            mx.eval([b.keys for b in new], [b.values for b in new])
            for b in new:
                self._add(b)
            self._trim()
        return len(new)

    def _add(self, block: Block) -> None:
        self.blocks[block.hash] = block
        self.bytes += block.nbytes

    def _trim(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        for h in list(self.blocks):
            if self.bytes <= self.max_bytes:
                break
            b = self.blocks[h]
            if b.refs > 0:
                continue
            del self.blocks[h]
            self.bytes -= b.nbytes
            self.stats.evictions += 1
            if self.ssd is not None:
                self._to_ssd(b)

    def _to_ssd(self, b: Block) -> None:
        """Stored as held: quantized blocks stay quantized on disk."""
        arrays = {f"{kind}{i}_{j}": _to_numpy(p) for kind, layers in (("k", b.keys), ("v", b.values))
                  for i, parts in enumerate(layers) for j, p in enumerate(parts)}
        dtypes = ["bfloat16" if p.dtype == mx.bfloat16 else str(p.dtype).split(".")[-1] for p in b.keys[0]]
        self.ssd.put(b.hash, arrays, {"model": self.model_id, "parent": b.parent or "", "tokens": b.tokens,
                                      "layers": len(b.keys), "parts": len(b.keys[0]), "dtypes": ",".join(dtypes),
                                      "dtype": dtypes[0]})

    def spill(self) -> int:
        """Every unreferenced block out of memory (to the SSD tier when there is one); blocks that
        running rows hold stay. Returns the bytes freed."""
        before, saved = self.bytes, self.max_bytes
        self.max_bytes = 0
        self._trim()
        self.max_bytes = saved
        return before - self.bytes

    def clear(self) -> None:
        for b in list(self.blocks.values()):
            b.refs = 0
        saved, self.max_bytes = self.max_bytes, 0
        self._trim()
        self.max_bytes = saved

    def snapshot(self) -> dict:
        s = self.stats
        return {"blocks": len(self.blocks), "bytes": self.bytes, "referenced_blocks": self.referenced,
                "shared_blocks": sum(1 for b in list(self.blocks.values()) if b.refs > 1), "hits": s.hits,
                "misses": s.misses, "tokens_saved": s.tokens_saved, "evictions": s.evictions, "ssd_hits": s.ssd_hits}
