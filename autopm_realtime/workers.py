"""`serve --workers N`: N server processes on one port, sharing a Redis broker.

The parent forks the workers and then only supervises: each worker binds the port itself with
SO_REUSEPORT, so the kernel spreads new connections over them, and runs its own IOLoop, hub and broker
reader. The parent holds the port (bound, never listening) so that `--port 0` means one port for all. It
forwards SIGINT/SIGTERM to the workers and waits for them; a worker that dies on its own is started again,
at most `--worker-restarts` times, after which the parent shuts the rest down and exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Callable

from .config import Settings

log = logging.getLogger("autopm_realtime")

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
RESTART_DELAY_SECONDS = 1.0   # between a worker's death and its replacement, so a crash loop is slow


def run_workers(settings: Settings, serve_worker: Callable[[Settings, int], int]) -> int:
    """Fork `settings.workers` processes running `serve_worker(settings_with_port, index)`; returns the
    exit status for the command."""
    reservation = _reserve_port(settings.host, settings.port)
    port = reservation.getsockname()[1]
    worker_settings = settings.with_port(port)
    children: dict[int, int] = {}   # pid -> worker index
    stopping = False

    def start(index: int) -> None:
        # Signals wait while forking: a worker must not run the parent's handler before it has its own,
        # and the parent must know the new pid before it forwards a stop.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:   # the worker
            reservation.close()
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = 1
            try:
                code = serve_worker(worker_settings, index)
            finally:
                os._exit(code)
        children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal(pid, signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    for index in range(settings.workers):
        start(index)
    log.info("autopm-realtime: %d workers serving port %d", settings.workers, port)
    restarts, failed = 0, False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code not in (0, -signal.SIGTERM)
            continue
        log.error("worker %d (pid %d) exited with %s", index, pid, code)
        if restarts >= settings.worker_restarts:
            log.error("worker restarts exhausted (--worker-restarts %d); shutting down", settings.worker_restarts)
            failed = stopping = True
            for other in children:
                _signal(other, signal.SIGTERM)
            continue
        restarts += 1
        time.sleep(RESTART_DELAY_SECONDS)
        if not stopping:   # a SIGTERM/SIGINT during the delay: no new worker that nobody would stop
            start(index)
    reservation.close()
    return 1 if failed else 0


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket: it fixes the port (0 picks one) and receives
    nothing, since only listening sockets join the kernel's balancing group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind((host, port))
    return reservation


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def serve_one_worker(settings: Settings, index: int) -> int:
    """A worker's life: its own event loop, serving until SIGINT/SIGTERM."""
    from .server import serve

    log.info("worker %d (pid %d) starting", index, os.getpid())
    try:
        asyncio.run(serve(settings, install_signal_handlers=True, reuse_port=True))
    except OSError as error:
        print(f"autopm-realtime worker {index}: cannot listen on port {settings.port}: {error.strerror}",
              file=sys.stderr)
        return 1
    return 0
