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

    async def start(self, *, reuse_port: bool = False, stop: asyncio.Event | None = None) -> int:
        """Bind the port, start the service, wait for its file watchers, then serve; returns the port
        (useful with port 0). `reuse_port` lets several worker processes listen on one port (workers.py).

        The port is bound first, so a port in use is reported at once; connections that arrive while the
        watchers start wait in the listen backlog. `stop` (set by SIGINT/SIGTERM) cuts the wait short."""
        sockets = bind_sockets(self.settings.port, self.settings.host, reuse_port=reuse_port)
        self.port = sockets[0].getsockname()[1]
        try:
            await self.service.start()
            await self._wait_for_watchers(stop or asyncio.Event())
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.http.add_sockets(sockets)
        return self.port

    async def _wait_for_watchers(self, stop: asyncio.Event) -> None:
        """Until the watchers watch, at most --watch-start-timeout, or until `stop`; a watcher that is not
        watching by then is named in a warning (its changes until it does are not reported)."""
        timeout = self.settings.watch_start_timeout
        if timeout <= 0:
            return
        waiting = asyncio.ensure_future(self.service.sources_ready(timeout))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not waiting.done():   # stopped during start-up
            waiting.cancel()
            return
        not_watching = waiting.result()
        if not_watching:
            log.warning("the file watcher of %s is not watching (--watch-start-timeout %g s): changes made "
                        "before it does are not reported", ", ".join(not_watching), timeout)

    async def stop(self) -> None:
        """Stop listening, close every connection with 1001 through the hub, then drop the rest."""
        self.http.stop()
        await self.service.stop()
        await self.http.close_all_connections()


async def serve(settings: Settings, *, install_signal_handlers: bool = False,
                stop: asyncio.Event | None = None, reuse_port: bool = False) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM when `install_signal_handlers`)."""
    stop = stop or asyncio.Event()
    if install_signal_handlers:   # before start-up, which may wait for the watchers
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    server = StandaloneServer(settings)
    port = await server.start(reuse_port=reuse_port, stop=stop)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    projects = ", ".join(f"{p.id}={p.path}" for p in settings.projects)
    if not stop.is_set():
        log.info("autopm-realtime serving http://%s:%d/ (projects: %s)", host, port, projects)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.stop()
