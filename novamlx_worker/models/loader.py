"""Find and load a language model: an MLX/HF folder, a .gguf file or a hub id on disk."""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..text.tokenizer import TextTokenizer, from_hf
from .gguf import dequantize_model, load_gguf
from protocol.naming import (DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_ID, classify,  # noqa: F401 - export.py, tests
                             default_model_path, model_id_for)



@dataclass
class LoadedModel:
    id: str
    path: str
    model: nn.Module
    tokenizer: TextTokenizer
    context_length: int
    aliases: list[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    vision: object = None  # models.vision.Vision for a vision-language model

    @property
    def kind(self) -> str:
        return "vlm" if self.vision is not None else "llm"


def is_model(path: Path) -> bool:
    """A folder with a config.json, or a regular file with a GGUF header. Special files
    (/dev/zero, FIFOs) are refused before they are opened."""
    import stat

    try:
        if path.is_dir():
            return (path / "config.json").is_file()
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def resolve(spec: str | None) -> tuple[str, str, list[str]]:
    """(model id, local path, aliases) for a --model argument; None is the embedded default."""
    if not spec:
        return DEFAULT_MODEL_ID, default_model_path(), list(DEFAULT_MODEL_ALIASES)
    path = Path(spec).expanduser()
    if path.exists():
        if not is_model(path):
            raise FileNotFoundError(f"{spec!r} is not a model: give a folder with a config.json or a .gguf file")
        return model_id_for(path), str(path.resolve()), []
    if "/" in spec:  # a hub id that is already downloaded
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(spec, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any miss means "not on disk"
            raise FileNotFoundError(f"model {spec!r} is not on disk ({type(e).__name__}); download it first") from e
        return spec, local, []
    raise FileNotFoundError(f"model {spec!r} not found: give a folder, a .gguf file or a hub id on disk")


def load(spec: str | None, dequantize: str = "auto", features=None, group=None, gguf_bits: int | None = None
         ) -> LoadedModel:
    """dequantize: "auto" (on CPU-only machines, where quantized matmul is slow), "on", "off".
    features: the worker's vision FeatureCache, for vision-language models.
    group: an mlx.distributed group of several ranks: the model is sharded over it (tensor
    parallel, mlx-lm's `shard`), each rank keeping its slice of every layer.
    gguf_bits: 4 or 8 to re-quantize a GGUF's block-quantized tensors to that width (None: by type)."""
    sharded = group is not None and group.size() > 1
    from ..platform import on_cpu_only

    model_id, path, aliases = resolve(spec)
    if Path(path).is_dir() and classify(Path(path)) == "vlm":
        from .vision import FeatureCache, load_vlm

        if sharded:
            raise ValueError("vision-language models cannot be sharded across ranks yet")
        model, vision, hf_tok, ctx = load_vlm(path, model_id, features or FeatureCache())
        return LoadedModel(model_id, path, model, from_hf(hf_tok), ctx, aliases, vision=vision)
    dense = dequantize == "on" or (dequantize == "auto" and on_cpu_only())
    dtype = mx.float32 if dense and on_cpu_only() else None
    if path.endswith(".gguf"):
        model, tokenizer, config = load_gguf(path, dequantize=dense, dtype=dtype, bits=gguf_bits)
        ctx = int(config.get("max_position_embeddings") or 4096)
    else:
        from mlx_lm.utils import load as mlx_lm_load

        model, hf_tok, config = mlx_lm_load(path, return_config=True, lazy=sharded)
        tokenizer = from_hf(hf_tok._tokenizer if hasattr(hf_tok, "_tokenizer") else hf_tok)
        if dense:
            model = dequantize_model(model, dtype or mx.float16)
        ctx = int(config.get("max_position_embeddings") or config.get("max_seq_len") or 4096)
    if sharded:
        if not hasattr(model, "shard"):
            raise ValueError(f"{model_id}: mlx-lm cannot shard this architecture (no `shard` method)")
        model.shard(group)  # before eval: a lazily loaded rank reads only its slices
    mx.eval(model.parameters())
    return LoadedModel(model_id, path, model, tokenizer, ctx, aliases)
