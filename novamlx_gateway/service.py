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
