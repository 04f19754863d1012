"""Settings: defaults < TOML file < NOVAMLX_* environment < command-line flags."""
from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import __version__


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 6590
    admin_port: int = 6591
    api_keys: list[str] = field(default_factory=list)
    admin_key: str | None = None
    models: list[str] = field(default_factory=list)  # empty: the embedded default model
    embedding_models: list[str] = field(default_factory=list)  # empty: the MiniLM wheel; ["none"]: none
    matryoshka_models: list[str] = field(default_factory=list)  # embedding models whose vectors may be shortened
    data_dir: str = "~/.novamlx"
    max_concurrent_requests: int = 16
    max_queue: int = 64
    request_timeout: float = 300.0
    max_request_size_mb: float = 100.0
    max_prompt_mb: float = 8.0  # prompt text per request (tokenizing costs ~150x its size in memory)
    max_batch: int = 32
    prefill_step: int = 512
    prefill_batch: int = 16
    dequantize: str = "auto"
    gguf_bits: str = "auto"  # block-quantized GGUF tensors re-quantized to 4 or 8 bits ("auto": by type)
    health_interval: float = 5.0
    health_log_max_mb: float = 10.0
    worker_start_timeout: float = 600.0
    ping_timeout: float = 60.0
    max_n: int = 16
    max_process_memory: str = "auto"
    pinned_models: list[str] = field(default_factory=list)
    default_max_tokens: int = 4096
    kv_budget_mb: float = 0.0  # 0: whatever the memory limit leaves after the weights
    block_size: int = 64
    prefix_cache_mb: float = 2048.0
    kv_bits: int = 0  # KV cache quantization for every model without its own kv_bits setting: 0 off, 2/3/4/6/8
    kv_group_size: int = 64  # 32, 64 or 128
    draft_model: str = ""  # a served model (same tokenizer) that drafts for every model without its own draft_model
    num_draft_tokens: int = 4
    max_sessions: int = 64  # conversations whose KV state is kept across turns (session_id); the oldest idle goes
    session_ttl: float = 1800.0  # seconds a session is kept idle
    speculative_ngram: int = 0  # n-gram (prompt lookup) drafts of up to this many tokens (every stream); 0 off
    speculative_ngram_min_match: int = 2  # the shortest n-gram of the last tokens looked up for a draft
    speculative_ngram_max_match: int = 4  # the longest (tried first)
    ssd_cache: bool = True
    ssd_cache_gb: float = 100.0
    shutdown_grace: float = 30.0
    mcp_servers: list = field(default_factory=list)  # [[mcp_servers]] tables: name, transport, command/url, ...
    cloud_models: list = field(default_factory=list)  # [{id, url, model, key_env}] remote OpenAI-compatible models
    turn_stop_patterns: list[str] = field(default_factory=list)  # text that ends any answer (TurnStopProcessor)
    tool_parser: str = "auto"  # or families: hermes, glm, deepseek, gemma, llama, marker, tool, mistral, function, namespaced
    reasoning_field: str = "reasoning_content"  # chat field for thinking text ("reasoning" for some clients)
    discover_hf_cache: bool = True  # serve MLX models found in the Hugging Face cache too
    # Browser origins allowed besides localhost ("*": any web page may call the API).
    cors_origins: list[str] = field(default_factory=list)
    # Host headers accepted besides the bound address and localhost ("*": any; DNS-rebinding guard).
    allowed_hosts: list[str] = field(default_factory=list)
    hf_endpoint: str = ""  # hub URL for search/download ('' : HF_ENDPOINT or huggingface.co)
    # Ask the project's releases API (at most daily) whether a newer release is out. Off by default:
    # a local server makes no call the user did not ask for (`service install` turns it on).
    update_check: bool = False
    update_url: str = "https://api.github.com/repos/novamlx/novamlx/releases/latest"
    distributed_backend: str = ""  # shard the models over ranks started by mlx.launch: ring, mpi, nccl, jaccl
    distributed_hostfile: str = ""  # mlx.launch hosts file; '' : distributed_ranks local processes
    distributed_ranks: int = 2
    distributed_port: int = 0  # ring backend's first port; 0: a free one at each start
    image_dirs: list[str] = field(default_factory=list)  # folders local image paths may come from; empty: none
    image_max_mb: float = 20.0
    image_max_pixels: int = 40_000_000  # decoded width x height
    image_max_count: int = 16  # images per request
    image_fetch_timeout: float = 10.0
    image_max_redirects: int = 3
    image_allow_private: bool = False  # allow image URLs on loopback/private/link-local addresses
    log_level: str = "INFO"

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))


_LIST_FIELDS = {"image_dirs": "image_dir", "api_keys": "api_key", "models": "model", "pinned_models": "pin", "embedding_models": "embedding_model",
                "turn_stop_patterns": "turn_stop", "cloud_models": "cloud_model", "cors_origins": "cors_origin",
                "allowed_hosts": "allowed_host"}


def on_off(value) -> bool:
    """The one reading of a yes/no setting: flags, environment, TOML strings, query parameters."""
    return str(value).lower() in ("1", "true", "yes", "on")


def _coerce(name: str, value, current):
    if name in _LIST_FIELDS:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    if isinstance(current, bool):
        return on_off(value)
    if isinstance(current, int) and not isinstance(current, bool):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="novamlx-gateway", description="NovaMLX: OpenAI- and Anthropic-compatible MLX server")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--admin-port", type=int)
    p.add_argument("--api-key", action="append", dest="api_keys", help="accepted API key (repeatable)")
    p.add_argument("--admin-key", help="key for the admin API (off without one)")
    p.add_argument("--model", action="append", dest="models",
                   help="model folder, .gguf file or hub id on disk (repeatable; default: embedded SmolLM2-135M)")
    p.add_argument("--embedding-model", action="append", dest="embedding_models",
                   help="embedding/rerank model folder (repeatable; default: the MiniLM wheel; 'none' for none)")
    p.add_argument("--data-dir")
    p.add_argument("--max-concurrent-requests", type=int)
    p.add_argument("--max-queue", type=int)
    p.add_argument("--request-timeout", type=float)
    p.add_argument("--max-request-size-mb", type=float)
    p.add_argument("--max-prompt-mb", type=float, help="prompt text per request, all messages together (default 8)")
    p.add_argument("--max-batch", type=int)
    p.add_argument("--prefill-step", type=int)
    p.add_argument("--prefill-batch", type=int, help="prompts prefilled together")
    p.add_argument("--dequantize", choices=["auto", "on", "off"])
    p.add_argument("--gguf-bits", choices=["auto", "4", "8"],
                   help="GGUF K-quants etc. re-quantized to MLX 4- or 8-bit (auto: <=4.5-bit types to 4, Q5/Q6/Q8 to 8)")
    p.add_argument("--health-interval", type=float)
    p.add_argument("--ping-timeout", type=float, help="seconds without a ping answer before a worker counts as hung")
    p.add_argument("--worker-start-timeout", type=float)
    p.add_argument("--max-process-memory", help="auto | 80%% | 24GB | 4096MB")
    p.add_argument("--pin", action="append", dest="pinned_models", help="model never evicted (repeatable)")
    p.add_argument("--default-max-tokens", type=int)
    p.add_argument("--kv-budget-mb", type=float, help="cap on KV cache reservations (default: memory limit minus weights)")
    p.add_argument("--block-size", type=int, help="prefix cache block size in tokens")
    p.add_argument("--prefix-cache-mb", type=float, help="in-memory prefix cache budget; 0 turns it off")
    p.add_argument("--kv-bits", type=int, choices=[0, 2, 3, 4, 6, 8],
                   help="quantize the KV cache (default 0: off); per model: the kv_bits setting")
    p.add_argument("--kv-group-size", type=int, choices=[32, 64, 128], help="KV quantization group size (default 64)")
    p.add_argument("--draft-model", help="speculative decoding: a served model with the same tokenizer that drafts "
                   "(per model: the draft_model setting)")
    p.add_argument("--num-draft-tokens", type=int, help="tokens a draft model proposes per step (default 4)")
    p.add_argument("--max-sessions", type=int, help="sessions kept (default 64; the oldest idle one goes)")
    p.add_argument("--session-ttl", type=float, help="seconds an idle session is kept (default 1800)")
    p.add_argument("--speculative-ngram", type=int,
                   help="n-gram speculative decoding: drafts of up to K tokens for every stream, exact (default 0: off)")
    p.add_argument("--speculative-ngram-min-match", type=int,
                   help="shortest n-gram of the last tokens looked up for a draft (default 2)")
    p.add_argument("--speculative-ngram-max-match", type=int,
                   help="longest n-gram looked up, tried first (default 4)")
    p.add_argument("--ssd-cache", type=on_off, help="on/off")
    p.add_argument("--ssd-cache-gb", type=float, help="SSD tier size cap")
    p.add_argument("--shutdown-grace", type=float, help="seconds in-flight requests get to finish on SIGTERM")
    p.add_argument("--discover-hf-cache", type=on_off,
                   help="on/off: serve MLX models found in the Hugging Face cache (default on)")
    p.add_argument("--hf-endpoint", help="Hugging Face hub URL for search and downloads")
    p.add_argument("--update-check", type=on_off, help="on/off: look for a newer release once a day (default off)")
    p.add_argument("--update-url", help="releases API answering {tag_name, html_url} for the latest release")
    p.add_argument("--distributed-backend", help="shard models across ranks: ring, mpi, nccl, jaccl ('' off)")
    p.add_argument("--distributed-hostfile", help="mlx.launch hosts file (default: local ranks)")
    p.add_argument("--distributed-ranks", type=int, help="local ranks when there is no hosts file (default 2)")
    p.add_argument("--distributed-port", type=int, help="ring backend starting port (default: a free one)")
    p.add_argument("--image-dir", action="append", dest="image_dirs",
                   help="folder that local image paths may come from (repeatable; default: none)")
    p.add_argument("--image-max-mb", type=float, help="largest image accepted (default 20)")
    p.add_argument("--image-max-pixels", type=int, help="largest decoded image, width x height")
    p.add_argument("--image-fetch-timeout", type=float, help="seconds to fetch one image URL")
    p.add_argument("--image-allow-private", type=on_off,
                   help="on/off: allow image URLs on loopback, private and link-local addresses")
    p.add_argument("--cors-origin", action="append", dest="cors_origins",
                   help="browser origin allowed to call the API besides localhost (repeatable; '*' for any)")
    p.add_argument("--allowed-host", action="append", dest="allowed_hosts",
                   help="Host header accepted besides the bound address and localhost (repeatable; '*' for any)")
    p.add_argument("--log-level")
    p.add_argument("--turn-stop", action="append", dest="turn_stop_patterns",
                   help="text that ends a turn for every request, e.g. '<|im_start|>' (repeatable)")
    p.add_argument("--cloud-model", action="append", dest="cloud_models",
                   help="remote model: id=NAME,url=https://host/v1[,model=REMOTE][,key_env=VAR] (repeatable)")
    p.add_argument("--tool-parser", help="auto (from the chat template) or a comma list of families")
    p.add_argument("--reasoning-field", help="chat completions field for thinking text (default reasoning_content)")
    return p


def load_config(argv: list[str] | None = None, environ: dict | None = None) -> Config:
    """Defaults < TOML file < NOVAMLX_* environment < flags."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    cfg = Config()
    names = {f.name for f in fields(Config)}
    config_file = args.config or environ.get("NOVAMLX_CONFIG")
    if config_file:
        with open(os.path.expanduser(config_file), "rb") as fh:
            data = tomllib.load(fh)
        for key, value in data.items():
            name = key.replace("-", "_")
            name = {"api_key": "api_keys", "model": "models", "cloud_model": "cloud_models"}.get(name, name)
            if name not in names:
                raise SystemExit(f"{config_file}: unknown setting {key!r}")
            setattr(cfg, name, _coerce(name, value, getattr(cfg, name)))
    for name in names:
        env_names = [f"NOVAMLX_{name.upper()}"] + ([f"NOVAMLX_{_LIST_FIELDS[name].upper()}"] if name in _LIST_FIELDS else [])
        for env in env_names:
            if env in environ:
                setattr(cfg, name, _coerce(name, environ[env], getattr(cfg, name)))
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    for name, (lo, hi) in RANGES.items():  # from any source: a value the worker cannot use stops start-up
        value = getattr(cfg, name)
        if not lo <= value <= hi:
            raise SystemExit(f"{name.replace('_', '-')} must be between {lo} and {hi}, not {value}")
    if cfg.speculative_ngram_min_match > cfg.speculative_ngram_max_match:
        raise SystemExit(f"speculative-ngram-min-match ({cfg.speculative_ngram_min_match}) must not exceed "
                         f"speculative-ngram-max-match ({cfg.speculative_ngram_max_match})")
    return cfg


RANGES = {"speculative_ngram": (0, 64), "num_draft_tokens": (1, 64),  # drafts wider than 64 tokens never pay
          "speculative_ngram_min_match": (1, 32), "speculative_ngram_max_match": (1, 32)}
