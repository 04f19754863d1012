"""`novamlx-gateway`: parse settings, start the worker, serve with Hypercorn.

`novamlx-gateway models list|search|pull|rm` manages the model store;
`novamlx-gateway agents list|config NAME` finds coding agents and prints (or writes) their config;
`novamlx-gateway launchd-plist [flags]` and `novamlx-gateway systemd-unit [flags]` print
a service file that runs the gateway with those flags.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config as HyperConfig

from .admin.app import create_admin_app
from .app import create_app
from .config import load_config
from .service import launchd_plist, systemd_unit

log = logging.getLogger("novamlx.gateway")


def _hypercorn(host: str, port: int, grace: float) -> HyperConfig:
    hc = HyperConfig()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    hc.graceful_timeout = grace
    hc.keep_alive_timeout = 75
    hc.backlog = 1024
    return hc


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        from .hub.cli import main as models_main

        raise SystemExit(models_main(argv[1:]))
    if argv and argv[0] == "agents":
        raise SystemExit(agents_main(argv[1:]))
    if argv and argv[0] == "tray":
        from .tray.app import tray_main

        raise SystemExit(tray_main(argv[1:]))
    if argv and argv[0] == "service":
        from .service import service_main

        raise SystemExit(service_main(argv[1:]))
    if argv and argv[0] in ("launchd-plist", "systemd-unit"):
        cfg = load_config(argv[1:])
        print(launchd_plist(argv[1:], cfg.data_dir) if argv[0] == "launchd-plist" else systemd_unit(argv[1:]), end="")
        return
    cfg = load_config(argv)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    app = create_app(cfg)
    admin = create_admin_app(cfg, app)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        servers = [serve(app, _hypercorn(cfg.host, cfg.port, cfg.shutdown_grace), shutdown_trigger=stop.wait)]
        if admin is not None:
            admin_cfg = _hypercorn(cfg.host, cfg.admin_port, cfg.shutdown_grace)
            servers.append(serve(admin, admin_cfg, shutdown_trigger=stop.wait, mode="asgi"))
            log.info("admin API on http://%s:%s", cfg.host, cfg.admin_port)
        else:
            log.info("admin API off: no admin key configured (--admin-key or NOVAMLX_ADMIN_KEY; an API key never opens it)")
        log.info("serving on http://%s:%s", cfg.host, cfg.port)

        async def end_cut_streams():
            """A second before Hypercorn's grace runs out it would drop the open connections:
            end what still runs with an error event first, so clients learn why."""
            await stop.wait()
            await asyncio.sleep(max(cfg.shutdown_grace - 1.0, 0.0))
            n = app.state.worker.fail_all(f"The server is shutting down; this request was cut off after the "
                                          f"{cfg.shutdown_grace:.0f} s grace period. Retry it.")
            if n:
                log.warning("shutdown: %d request(s) still running at the grace deadline ended with an error", n)

        cutter = asyncio.ensure_future(end_cut_streams())
        await asyncio.gather(*servers)
        cutter.cancel()

    asyncio.run(run())


def agents_main(argv: list[str]) -> int:
    """`agents list` | `agents config NAME [--write] [--env] [--model M] [--context N] [server flags]`."""
    import argparse
    import json

    from . import agents

    if not argv or argv[0] not in ("list", "config"):
        print("usage: novamlx-gateway agents list | config NAME [--write] [--env] [--model M] [--context N] "
              f"[--port P --api-key K ...]\nagents: {', '.join(agents.AGENTS)}", file=sys.stderr)
        return 2
    if argv[0] == "list":
        for a in agents.detect():
            where = a["binary"] if a["installed"] else f"not found ({a['install']})"
            print(f"{a['name']:12} {where:50} config {a['config_path']}")
        return 0
    p = argparse.ArgumentParser(prog="novamlx-gateway agents config")
    p.add_argument("name", choices=list(agents.AGENTS))
    p.add_argument("--write", action="store_true", help="write the agent's config file (a backup keeps the old one)")
    p.add_argument("--env", action="store_true", help="the environment form (OpenCode, Claude Code, Codex's key)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--context", type=int, default=0, help="the model's context window, for the agent's limits")
    own, rest = p.parse_known_args(argv[1:])
    cfg = load_config(rest)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    target = agents.Target(f"http://{host}:{cfg.port}", cfg.api_keys[0] if cfg.api_keys else None, own.model,
                           own.context)
    if own.write:
        print(json.dumps(agents.write(own.name, target)))
    else:
        print(agents.config(own.name, target, env_form=own.env)[1], end="")
    return 0


if __name__ == "__main__":
    main()


def novamlx_main(argv: list[str] | None = None) -> None:
    """`novamlx bench ...` (and `novamlx serve ...`, the same as novamlx-gateway)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "serve":
        return main(argv[1:])
    if argv and argv[0] == "convert":
        from novamlx_worker.platform import preload_openblas

        preload_openblas()
        from novamlx_worker.models.export import main as convert_main

        return convert_main(argv[1:])
    if argv and argv[0] in ("models", "agents", "service", "tray", "launchd-plist", "systemd-unit"):
        return main(argv)
    print(NOVAMLX_USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help", "help") else sys.stdout)
    raise SystemExit(0 if argv and argv[0] in ("-h", "--help", "help") else 2)


NOVAMLX_USAGE = """usage: novamlx COMMAND ...

commands:
  serve [flags]                    start the server (the same as novamlx-gateway [flags])
  models list|search|pull|rm       the model store (novamlx-gateway models ...)
  agents list|config NAME          coding agents on this machine; their config for this server
  convert SRC OUT [--bits 4|8]     a .gguf file or a Hugging Face folder -> an MLX model folder
  bench load|agent|prefix|compare|embed|mask|shardcheck|probe|kv
                                   benchmarks against a running server and its peers (docs/benchmarks.md)
  service install|uninstall|status|logs   run the server at login (launchd LaunchAgent / systemd user unit)
  tray [--url URL] [--lang L]      menu bar / system tray icon for the running server
  launchd-plist [flags]            print a launchd plist that runs the server with these flags
  systemd-unit [flags]             print a systemd unit that runs the server with these flags

`novamlx COMMAND --help` for a command's options."""
