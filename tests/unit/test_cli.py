"""The command-line entry points as a new user runs them."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args, **kw):
    return subprocess.run([sys.executable, "-c", "from novamlx_gateway.cli import novamlx_main; novamlx_main()", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


def test_novamlx_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("serve", "models", "bench", "launchd-plist", "systemd-unit"):
        assert cmd in out.stdout
    for sub in ("load", "agent", "prefix", "compare", "embed"):
        assert sub in out.stdout


def test_models_list_shows_the_embedded_models_with_data_dir_after_list(tmp_path):
    for argv in (("models", "list", "--data-dir", str(tmp_path)), ("models", "--data-dir", str(tmp_path), "list")):
        out = run(*argv)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert any(line.startswith("smollm2-135m-instruct") and "embedded" in line for line in lines), out.stdout
        assert any(line.startswith("all-minilm-l6-v2") and "embedding" in line for line in lines), out.stdout
