"""Write a GGUF model as an MLX-format folder (config.json, safetensors, tokenizer), so tools
that only read folders (mlx_lm.server, mlx-lm's loaders) can serve the same weights; convert
a Hugging Face folder (or hub id on disk) to MLX through mlx-lm's converter. `novamlx convert`.

    python -m novamlx_worker.models.export [model.gguf] OUT_DIR      (default: the embedded model)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .gguf import load_gguf
from .loader import default_model_path


def quantization_config(model) -> dict | None:
    """mlx-lm's `quantization` entry for a model's quantized layers: the most common width at the
    top, a per-layer entry for every layer of another width (a Q4_K_M file's 8-bit Q6_K layers)."""
    layers = {name: {"group_size": m.group_size, "bits": m.bits} for name, m in model.named_modules()
              if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    if not layers:
        return None
    widths = [q["bits"] for q in layers.values()]
    top = {"group_size": next(iter(layers.values()))["group_size"], "bits": max(set(widths), key=widths.count)}
    return {**top, **{name: q for name, q in layers.items() if q != top}}


def export(gguf_path: str, out: Path, bits: int | None = None, log=print) -> Path:
    """bits: re-quantize the file's block-quantized tensors to 4 or 8 bits (None: by type, gguf.py)."""
    log(f"reading {gguf_path}")
    model, tok, config = load_gguf(gguf_path, dequantize=False, bits=bits)
    out.mkdir(parents=True, exist_ok=True)
    config["quantization"] = quantization_config(model)
    if config["quantization"] is None:
        config.pop("quantization")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    weights = dict(tree_flatten(model.parameters()))
    log(f"writing {len(weights)} tensors ({sum(w.nbytes for w in weights.values()) / 1e9:.2f} GB) to {out}")
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    tok.tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        "chat_template": tok.chat_template, "model_max_length": config.get("max_position_embeddings", 4096)}))
    return out


def convert(src: str, out: Path, bits: int | None = None, group_size: int = 64, dtype: str | None = None,
            log=print) -> Path:
    """A .gguf file (export above) or a Hugging Face model folder / hub id on disk (mlx-lm's
    converter: bf16 or the given dtype, quantized to `bits` with `group_size` when asked)."""
    if str(src).endswith(".gguf"):
        return export(src, out, bits, log)
    from mlx_lm import convert as mlx_lm_convert

    from .loader import resolve

    _, path, _ = resolve(src)
    log(f"converting {path} with mlx-lm" + (f" to {bits}-bit, group {group_size}" if bits else ""))
    mlx_lm_convert(path, mlx_path=str(out), quantize=bits is not None, q_bits=bits or 4, q_group_size=group_size,
                   dtype=dtype)
    return out


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="novamlx convert", description="a GGUF file or a Hugging Face model folder "
                                "(or a hub id already downloaded) -> an MLX model folder")
    p.add_argument("src", nargs="?", default=None, help="a .gguf file, a folder or a hub id (default: the embedded model)")
    p.add_argument("out")
    p.add_argument("--bits", type=int, choices=[4, 8], default=None,
                   help="quantize to this width (GGUF: re-quantize block types to it; default: by type / none)")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128], default=64, help="Hugging Face sources")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None, help="Hugging Face sources")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = convert(args.src or default_model_path(), Path(args.out), args.bits, args.group_size, args.dtype)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"novamlx convert: {e}") from None
    print(f"done: {out}")


if __name__ == "__main__":
    main()
