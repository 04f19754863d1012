"""Service files for running the gateway at login (launchd) or boot (systemd)."""
from __future__ import annotations

import os
import shutil
import sys
from xml.sax.saxutils import escape

LABEL = "com.novamlx.gateway"


def _program(args: list[str]) -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "novamlx-gateway")
    exe = beside if os.path.exists(beside) else shutil.which("novamlx-gateway")
    return [exe, *args] if exe else [sys.executable, "-m", "novamlx_gateway", *args]


def launchd_plist(args: list[str], data_dir: str = "~/.novamlx") -> str:
    logs = os.path.join(os.path.expanduser(data_dir), "logs")
    argv = "\n".join(f"        <string>{escape(a)}</string>" for a in _program(args))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{LABEL}</string>
    <key>ProgramArguments</key>
    <array>
{argv}
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ThrottleInterval</key>
    <integer>10</integer>
    <key>ExitTimeOut</key>
    <integer>40</integer>
    <key>StandardOutPath</key>
    <string>{escape(logs)}/gateway.out.log</string>
    <key>StandardErrorPath</key>
    <string>{escape(logs)}/gateway.err.log</string>
    <key>ProcessType</key>
    <string>Interactive</string>
</dict>
</plist>
"""


def systemd_unit(args: list[str]) -> str:
    cmd = " ".join(_program(args))
    return f"""[Unit]
Description=NovaMLX inference gateway
After=network.target

[Service]
ExecStart={cmd}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=40

[Install]
WantedBy=default.target
"""


# ---- novamlx-gateway service install|uninstall|status|logs ----

UNIT = "novamlx-gateway.service"


def service_file(home: str | None = None) -> str:
    """Where the service definition lives: a LaunchAgent on macOS, a systemd user unit elsewhere."""
    home = home or os.path.expanduser("~")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "LaunchAgents", f"{LABEL}.plist")
    return os.path.join(home, ".config", "systemd", "user", UNIT)


def _run(cmd: list[str]) -> tuple[bool, str]:
    """Run a service manager command; (ok, its output). A missing tool is not ok, never an exception."""
    import subprocess

    if shutil.which(cmd[0]) is None:
        return False, f"{cmd[0]} is not available here"
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def _manager(action: str, path: str) -> list[list[str]]:
    """The service manager's commands for an action (launchctl on macOS, systemctl --user elsewhere)."""
    if sys.platform == "darwin":
        domain = f"gui/{os.getuid()}"
        return {"start": [["launchctl", "bootout", domain, path], ["launchctl", "bootstrap", domain, path]],
                "stop": [["launchctl", "bootout", domain, path]],
                "status": [["launchctl", "print", f"{domain}/{LABEL}"]]}[action]
    return {"start": [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT]],
            "stop": [["systemctl", "--user", "disable", "--now", UNIT]],
            "status": [["systemctl", "--user", "is-active", UNIT]]}[action]


def service_main(argv: list[str]) -> int:
    """install [server flags] (idempotent) | uninstall [--purge] | status | logs."""
    from .config import load_config

    if not argv or argv[0] not in ("install", "uninstall", "status", "logs"):
        print("usage: novamlx-gateway service install [flags] | uninstall [--purge] | status | logs", file=sys.stderr)
        return 2
    action, rest = argv[0], argv[1:]
    purge = "--purge" in rest
    rest = [a for a in rest if a != "--purge"]
    if action == "install" and not any(a.startswith("--update-check") for a in rest):
        rest += ["--update-check", "on"]  # an installed service looks for new releases (daily; off: --update-check off)
    cfg = load_config(rest)
    path = service_file()
    if action == "install":
        text = launchd_plist(rest, cfg.data_dir) if sys.platform == "darwin" else systemd_unit(rest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.makedirs(os.path.join(cfg.data_path, "logs"), exist_ok=True)
        same = os.path.exists(path) and open(path).read() == text
        if not same:
            with open(path + ".tmp", "w") as fh:
                fh.write(text)
            os.replace(path + ".tmp", path)
        print(f"{'unchanged' if same else 'wrote'} {path}")
        for cmd in _manager("start", path):
            ok, out = _run(cmd)
            if not ok and "bootout" not in cmd:  # (bootout of a service that is not loaded fails: fine)
                print(f"not started: {' '.join(cmd)}: {out or 'failed'}\nthe service file is in place; start it "
                      f"with: {' '.join(_manager('start', path)[-1])}")
                return 0
        print(f"started (http://{cfg.host}:{cfg.port})")
        return 0
    if action == "uninstall":
        if os.path.exists(path):
            for cmd in _manager("stop", path):
                _run(cmd)
            os.remove(path)
            print(f"removed {path}")
        else:
            print(f"not installed ({path} does not exist)")
        if purge:
            shutil.rmtree(cfg.data_path, ignore_errors=True)
            print(f"removed {cfg.data_path}")
        else:
            print(f"kept {cfg.data_path} (models, caches, settings; --purge removes it)")
        return 0
    if action == "status":
        print(f"service file: {path if os.path.exists(path) else 'not installed'}")
        ok, out = _run(_manager("status", path)[0])
        print(f"service manager: {out.splitlines()[0] if out else ('active' if ok else 'unknown')}")
        try:
            import httpx

            h = httpx.get(f"http://{cfg.host}:{cfg.port}/health", timeout=2).json()
            print(f"server: {h.get('status')} on http://{cfg.host}:{cfg.port}")
        except Exception:  # noqa: BLE001 - not running is an answer, not an error
            print(f"server: not answering on http://{cfg.host}:{cfg.port}")
        return 0
    logs = os.path.join(cfg.data_path, "logs", "gateway.err.log")
    if sys.platform != "darwin":
        ok, out = _run(["journalctl", "--user", "-u", UNIT, "-n", "200", "--no-pager"])
        if ok:
            print(out)
            return 0
    if os.path.exists(logs):
        with open(logs, errors="replace") as fh:
            print("".join(fh.readlines()[-200:]), end="")
        return 0
    print(f"no logs yet ({logs}; journalctl --user -u {UNIT})")
    return 0
