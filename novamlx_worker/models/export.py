"""Write a GGUF model as an MLX-format folder (config.json, safetensors, tokenizer), so tools
that only read folders (mlx_lm.server, mlx-lm's loaders) can serve the same weights.

    python -m novamlx_worker.models.export [model.gguf] OUT_DIR      (default: the embedded model)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .gguf import load_gguf
from .loader import default_model_path


def export(gguf_path: str, out: Path) -> Path:
    model, tok, config = load_gguf(gguf_path, dequantize=False)
    out.mkdir(parents=True, exist_ok=True)
    if config.get("quantization"):
        config["quantization"] = {"group_size": 32, "bits": 4}  # mlx-lm reads per-layer bits from shapes
    else:
        config.pop("quantization", None)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    tok.tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        "chat_template": tok.chat_template, "model_max_length": config.get("max_position_embeddings", 4096)}))
    return out


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    src, dst = (args[0], args[1]) if len(args) == 2 else (default_model_path(), args[0])
    print(export(src, Path(dst)))


if __name__ == "__main__":
    main()
