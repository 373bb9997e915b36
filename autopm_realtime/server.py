"""Run the standalone server: build the service, listen, log the URL, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .config import Settings
from .service import RealtimeService
from .web.app import make_app

log = logging.getLogger("autopm_realtime")


async def serve(settings: Settings, *, install_signal_handlers: bool = False,
                stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM when `install_signal_handlers`)."""
    stop = stop or asyncio.Event()
    service = RealtimeService(settings)
    await service.start()
    sockets = bind_sockets(settings.port, settings.host)
    server = HTTPServer(make_app(service), max_body_size=settings.max_publish_bytes, xheaders=False)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    projects = ", ".join(f"{p.id}={p.path}" for p in settings.projects)
    log.info("autopm-realtime serving http://%s:%d/ (projects: %s)", host, port, projects)
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        server.stop()
        await service.stop()
        await server.close_all_connections()
