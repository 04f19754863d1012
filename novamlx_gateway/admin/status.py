"""GET /admin/api/status: the health snapshot and this machine, for the dashboard's cards."""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache

import psutil
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import __version__
from ..api.health import snapshot


@lru_cache(maxsize=1)
def _chip() -> str:
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=2).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            return platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    vm = psutil.virtual_memory()
    return {"chip": _chip(), "os": platform.platform(terse=True), "machine": platform.machine(),
            "cpu_cores": psutil.cpu_count(logical=False), "cpu_threads": psutil.cpu_count(),
            "memory_bytes": vm.total, "memory_available_bytes": vm.available, "python": platform.python_version(),
            "version": __version__}


async def status(request: Request):
    return JSONResponse({"health": await snapshot(request.app.state.main), "device": device_info()})
