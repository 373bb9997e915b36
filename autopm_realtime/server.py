"""Run the standalone server: the service and its HTTP server, started and stopped in the right order."""

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


def make_http_server(service: RealtimeService) -> HTTPServer:
    """The HTTP server for a service, as `serve` runs it (the tests use this too).

    Tornado's own body limit is twice the publish limit: bodies up to it reach the publish handler,
    which answers 413 with a reason; only a chunked body past twice the limit is cut off by tornado."""
    return HTTPServer(make_app(service), max_body_size=2 * service.settings.max_publish_bytes)


class StandaloneServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = RealtimeService(settings)
        self.http = make_http_server(self.service)
        self.port = settings.port

    async def start(self, *, reuse_port: bool = False) -> int:
        """Start the service, wait for its file watchers, then listen; returns the port (useful with
        port 0). `reuse_port` lets several worker processes listen on one port (workers.py)."""
        await self.service.start()
        timeout = self.settings.watch_start_timeout
        not_watching = await self.service.sources_ready(timeout) if timeout > 0 else []
        if not_watching:
            log.warning("the file watcher of %s is not watching after %g s (--watch-start-timeout): "
                        "changes made before it does are not reported", ", ".join(not_watching), timeout)
        sockets = bind_sockets(self.settings.port, self.settings.host, reuse_port=reuse_port)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening, close every connection with 1001 through the hub, then drop the rest."""
        self.http.stop()
        await self.service.stop()
        await self.http.close_all_connections()


async def serve(settings: Settings, *, install_signal_handlers: bool = False,
                stop: asyncio.Event | None = None, reuse_port: bool = False) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM when `install_signal_handlers`)."""
    stop = stop or asyncio.Event()
    server = StandaloneServer(settings)
    port = await server.start(reuse_port=reuse_port)
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
        await server.stop()
