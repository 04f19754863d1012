"""Process-level MLX setup that must happen before `import mlx.core`."""
from __future__ import annotations

import ctypes
import glob
import os
import sys


def preload_openblas() -> str | None:
    """Load OpenBLAS globally so MLX's CPU matmuls use it instead of reference BLAS.

    MLX's Linux CPU wheel links a slow reference BLAS; symbols from a library loaded
    first with RTLD_GLOBAL win (measured 2.9 -> 115 GFLOP/s on a matmul). Only on Linux,
    and never when NOVAMLX_OPENBLAS=0.
    """
    if not sys.platform.startswith("linux") or os.environ.get("NOVAMLX_OPENBLAS") == "0":
        return None
    for base in sys.path:
        for path in sorted(glob.glob(os.path.join(base, "cmeel.prefix", "lib", "libopenblas*.so*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return path
            except OSError:
                continue
    return None


def on_cpu_only() -> bool:
    import mlx.core as mx

    return not (mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()))
