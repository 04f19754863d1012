"""`novamlx-gateway service install|status|uninstall` against a temporary HOME: the unit file is
written (idempotently) with the server's flags and verified by systemd-analyze where present,
uninstall removes it and keeps the data; the launchd plist parses with plistlib."""
import os
import plistlib
import shutil
import subprocess
import sys

from tests.conftest import ROOT

CLI = [sys.executable, "-c", "import sys; from novamlx_gateway.cli import main; main(sys.argv[1:])"]


def run(home, *args):
    r = subprocess.run([*CLI, "service", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run")})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_install_status_uninstall_round_trip(tmp_path):
    data = tmp_path / "data"
    out = run(tmp_path, "install", "--port", "7555", "--data-dir", str(data))
    unit = tmp_path / ".config" / "systemd" / "user" / "novamlx-gateway.service"
    assert f"wrote {unit}" in out and ("started" in out or "not started" in out)  # no user systemd in a container
    text = unit.read_text()
    assert "--port 7555" in text and "--update-check on" in text and "Restart=on-failure" in text and "WantedBy=default.target" in text
    if shutil.which("systemd-analyze"):  # (system mode: a container has no user manager to ask)
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert check.returncode == 0 and not check.stderr.strip(), check.stderr
    assert "unchanged" in run(tmp_path, "install", "--port", "7555", "--data-dir", str(data))  # idempotent
    status = run(tmp_path, "status", "--port", "7555")
    assert str(unit) in status and "not answering on http://127.0.0.1:7555" in status
    (data / "keep.txt").write_text("models live here")
    out = run(tmp_path, "uninstall", "--data-dir", str(data))
    assert f"removed {unit}" in out and not unit.exists() and (data / "keep.txt").exists()
    assert "not installed" in run(tmp_path, "uninstall", "--data-dir", str(data))
    run(tmp_path, "uninstall", "--purge", "--data-dir", str(data))
    assert not data.exists()


def test_launchd_plist_parses():
    from novamlx_gateway.service import LABEL, launchd_plist

    plist = plistlib.loads(launchd_plist(["--port", "7555"], "/tmp/novamlx-data").encode())
    assert plist["Label"] == LABEL and plist["ProgramArguments"][-2:] == ["--port", "7555"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["StandardErrorPath"] == "/tmp/novamlx-data/logs/gateway.err.log"
