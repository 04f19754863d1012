"""`novamlx-gateway`: parse settings, start the worker, serve with Hypercorn."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config as HyperConfig

from .app import create_app
from .config import load_config


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(argv)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    app = create_app(cfg)
    hc = HyperConfig()
    hc.bind = [f"{cfg.host}:{cfg.port}"]
    hc.accesslog = None
    hc.graceful_timeout = 10
    hc.keep_alive_timeout = 75
    hc.backlog = 1024

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        logging.getLogger("novamlx.gateway").info("serving on http://%s:%s", cfg.host, cfg.port)
        await serve(app, hc, shutdown_trigger=stop.wait)

    asyncio.run(run())


if __name__ == "__main__":
    main()
