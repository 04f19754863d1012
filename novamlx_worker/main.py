"""Worker entry: stdin reader thread, engine on the main thread, locked stdout writer.

The real stdout belongs to the protocol. `sys.stdout` is pointed at stderr before
anything else runs so a stray print can never corrupt the channel.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .platform import preload_openblas


def _claim_stdout():
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # fd 1 -> stderr for C-level writes too
    sys.stdout = sys.stderr
    return proto


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="novamlx_worker")
    p.add_argument("--model", action="append", default=[], help="model path or hub id (repeatable)")
    p.add_argument("--dequantize", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--gguf-bits", default="auto", choices=["auto", "4", "8"])
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--prefill-step", type=int, default=512)
    p.add_argument("--prefill-batch", type=int, default=16)
    p.add_argument("--health-interval", type=float, default=5.0)
    p.add_argument("--pin", action="append", default=[], help="model id never evicted (repeatable)")
    p.add_argument("--max-process-memory", default="auto", help="auto, a percent (80%%) or a size (24GB)")
    p.add_argument("--default-max-tokens", type=int, default=4096)
    p.add_argument("--kv-budget-mb", type=float, default=0.0)
    p.add_argument("--kv-bits", type=int, default=0, help="KV cache quantization: 0 (off), 2, 3, 4, 6, 8")
    p.add_argument("--kv-group-size", type=int, default=64, help="32, 64 or 128")
    p.add_argument("--ngram-draft", type=int, default=0, help="n-gram speculative drafts of up to K tokens (0: off)")
    p.add_argument("--ngram-match", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"),
                   help="n-grams looked up for drafts: the shortest and longest n (longest first)")
    p.add_argument("--draft-model", default="", help="model id drafting for every model without its own draft_model")
    p.add_argument("--num-draft-tokens", type=int, default=4)
    p.add_argument("--sessions-dir", default="", help="folder for saved sessions ('' : saving off)")
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--session-ttl", type=float, default=1800.0)
    p.add_argument("--turn-stop", action="append", default=[], help="text that ends a turn for every request")
    p.add_argument("--tool-parser", default="auto", help="auto (from the chat template) or families: hermes,mistral,...")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--prefix-cache-mb", type=float, default=2048.0, help="0 turns the prefix cache off")
    p.add_argument("--ssd-cache-dir", default="", help="folder for the SSD tier ('' turns it off)")
    p.add_argument("--ssd-cache-gb", type=float, default=100.0)
    p.add_argument("--vision-cache-dir", default="", help="folder for vision features on disk ('' : memory only)")
    p.add_argument("--distributed-backend", default="",
                   help="shard the models over the ranks mlx.launch started (ring, mpi, nccl, jaccl, any); '' : one process")
    p.add_argument("--embedding-model", action="append", default=[],
                   help="embedding or reranking model folder (repeatable); 'none' serves none; default: MiniLM wheel")
    return p.parse_args(argv)


def load_embedders(specs: list[str]) -> list:
    from protocol.naming import DEFAULT_EMBEDDING_ALIASES, DEFAULT_EMBEDDING_ID, default_embedding_path

    from .models.embedder import load_embedder

    if "none" in specs:
        return []
    if specs:
        return [load_embedder(s) for s in specs]
    path = default_embedding_path()
    return [load_embedder(path, DEFAULT_EMBEDDING_ID, list(DEFAULT_EMBEDDING_ALIASES))] if path else []


def main(argv=None) -> None:
    # Ctrl-C reaches the whole process group; the gateway decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proto_out = _claim_stdout()
    logging.basicConfig(level=os.environ.get("NOVAMLX_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    log = logging.getLogger("novamlx.worker")
    args = parse_args(argv)
    blas = preload_openblas()

    import msgspec

    from protocol import PROTOCOL_VERSION, codec
    from protocol import messages as m

    lockstep = None
    if args.distributed_backend:
        import mlx.core as mx

        from .engine.lockstep import Lockstep

        group = mx.distributed.init(strict=True, backend=args.distributed_backend)
        lockstep = Lockstep(group)
        log.info("rank %d of %d (%s)", group.rank(), group.size(), args.distributed_backend)
    leader = lockstep is None or lockstep.rank == 0
    write_lock = threading.Lock()
    encode = codec.encode
    if lockstep is not None and leader:
        fifo = os.environ.get("NOVAMLX_PROTOCOL_FIFO")
        if fifo:  # local ranks: a direct channel to the gateway instead of mlx.launch's 100 ms relay
            proto_out = open(fifo, "wb", buffering=0)
        else:  # the relay decodes chunks on its own and could split a UTF-8 character
            encode = codec.encode_ascii

    def emit(msg) -> None:
        if not leader:  # only rank 0 speaks to the gateway
            return
        data = encode(msg)
        with write_lock:
            proto_out.write(data)

    from .engine.engine import Engine
    from .engine.sessions import Sessions
    from .engine.ssd_cache import SSDTier
    from .health import snapshot, start_health_push
    from .memory import MemoryEnforcer
    from .models.pool import ModelPool

    try:
        pool = ModelPool(args.model or [None], args.pin, args.dequantize, lockstep.group if lockstep else None,
                         args.vision_cache_dir or None, gguf_bits=None if args.gguf_bits == "auto" else int(args.gguf_bits))
        for entry in pool.entries.values():
            pool.get(entry.id)
        memory = MemoryEnforcer(args.max_process_memory)
        embedders = load_embedders(args.embedding_model)
        from .text.tool_parsers import families_for

        families_for(None, args.tool_parser)  # an unknown parser name fails here, at start-up
        from .engine.kv import checked

        checked(args.kv_bits, args.kv_group_size)  # so does a KV format MLX cannot quantize to
    except Exception as e:  # noqa: BLE001 - report any load failure to the gateway, then exit
        log.exception("start-up failed")
        emit(m.Error("", f"worker start-up failed: {e}", "model_load_failed"))
        sys.exit(3)
    log.info("loaded %s (openblas: %s)", ", ".join(pool.entries), blas or "no")
    engine = Engine(pool, emit, memory, max_batch=args.max_batch, prefill_step=args.prefill_step,
                    prefill_batch=args.prefill_batch,
                    default_max_tokens=args.default_max_tokens, kv_budget_cap=int(args.kv_budget_mb * 1024**2),
                    kv=(args.kv_bits, args.kv_group_size), ngram_k=max(args.ngram_draft, 0),
                    ngram_match=tuple(args.ngram_match),
                    draft=args.draft_model, draft_k=max(args.num_draft_tokens, 1),
                    sessions=Sessions(args.sessions_dir or None, args.max_sessions, args.session_ttl),
                    block_size=args.block_size, prefix_cache_bytes=int(args.prefix_cache_mb * 1024**2),
                    ssd=SSDTier(args.ssd_cache_dir, int(args.ssd_cache_gb * 1024**3))
                    if args.ssd_cache_dir and lockstep is None else None,  # ranks would each see their own disk
                    embedders=embedders, tool_parser=args.tool_parser, turn_stops=args.turn_stop, lockstep=lockstep)
    emit(m.Hello(PROTOCOL_VERSION, os.getpid(), engine.models.infos(), ["chat", "completions", "logprobs", "echo"]))

    def reader():
        for line in sys.stdin.buffer:
            if not line.strip() or not leader:  # mlx.launch copies stdin to every rank; rank 0 shares it
                continue
            try:
                cmd = codec.decode_command(line)
            except Exception as e:  # noqa: BLE001 - junk on the pipe is answered and logged, never fatal
                log.error("bad command line: %s", e)
                rid = codec.line_id(line)
                if rid:  # never a silent drop: the request that sent it gets an error, not a hang
                    emit(m.Error(rid, f"The worker could not read this request: {e}", "invalid_request"))
                continue
            if isinstance(cmd, m.Stats):  # answered here, not behind the engine's current step
                emit(m.Result(cmd.id, data=msgspec.to_builtins(snapshot(engine))))
                continue
            engine.inbox.put(cmd)
        # The gateway is gone: leave no orphan behind.
        log.info("stdin closed; exiting")
        os._exit(0)

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    if leader:
        start_health_push(engine, emit, args.health_interval)
    try:
        engine.run()
    except BaseException:
        log.exception("engine thread died")
        os._exit(1)
    os._exit(0)
