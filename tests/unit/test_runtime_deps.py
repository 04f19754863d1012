"""Every third-party import of shipped code comes from [project.dependencies], not the dev extra."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_imports_are_runtime_dependencies():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "check_runtime_deps.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
