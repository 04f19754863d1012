"""The Homebrew formula generator: markers judged for macOS arm64, and the Ruby it writes."""
from __future__ import annotations

import importlib.util
import sys

from tests.conftest import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("make_formula", ROOT / "packaging" / "homebrew" / "make_formula.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_formula"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_markers_are_judged_for_the_mac_not_this_machine():
    mf = _module()
    got = mf.for_target(["mlx==0.32.4; sys_platform == 'darwin'", "mlx[cpu]==0.32.4; sys_platform == 'linux'",
                         "rumps>=0.4; sys_platform == 'darwin'", "pystray>=0.19; sys_platform != 'darwin'",
                         "cmeel-openblas; sys_platform == 'linux' and platform_machine == 'x86_64'", "httpx>=0.27"])
    assert got == ["mlx==0.32.4", "rumps>=0.4", "httpx>=0.27"]


def test_formula_text():
    mf = _module()
    text = mf.formula({"version": "1.2.3", "description": 'A "local" server', "license": "Apache-2.0"},
                      "https://example.com/novamlx-1.2.3.tar.gz", "ab" * 32,
                      [{"name": "mlx", "version": "0.32.4", "url": "https://example.com/mlx.whl", "sha256": "cd" * 32}])
    assert text.count('resource "') == 1 and 'url "https://example.com/mlx.whl"' in text
    assert 'desc "A \'local\' server"' in text and 'license "Apache-2.0"' in text
    assert 'depends_on "python@3.12"' in text and "virtualenv_install_with_resources" in text
    assert '"#{bin}/novamlx-gateway --version"' in text and text.rstrip().endswith("end")
    opened = sum(line.rstrip().endswith(" do") or line.lstrip().startswith(("class ", "def "))
                 for line in text.splitlines())
    closed = sum(line.strip() == "end" for line in text.splitlines())
    assert opened == closed
