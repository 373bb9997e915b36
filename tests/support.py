"""Test clients that speak the wire protocols over real sockets, and small helpers around them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.testing import bind_unused_port
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_ext.discovery import terminate

RECEIVE_TIMEOUT = 5.0


def with_settings(**overrides: Any):
    """Run a test against a server with these `Settings` fields changed."""
    import pytest

    return pytest.mark.parametrize("settings_overrides", [overrides], indirect=True,
                                   ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))


class WsClient:
    """A WebSocket test client that reads JSON messages with a timeout.

    Every client opened is closed after its test by the `close_test_clients` fixture."""

    opened: list[WsClient] = []

    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection
        WsClient.opened.append(self)

    @classmethod
    async def open(cls, port: int, *, headers: dict[str, str] | None = None,
                   path: str = "/api/v1/dashboard/ws",
                   compression_options: dict[str, Any] | None = None) -> WsClient:
        """`compression_options={}` asks the server for permessage-deflate."""
        request = HTTPRequest(f"ws://127.0.0.1:{port}{path}", headers=headers or {})
        return cls(await websocket_connect(request, compression_options=compression_options))

    @classmethod
    async def connected(cls, port: int, **kwargs: Any) -> tuple[WsClient, dict[str, Any]]:
        """Open and read `connection_established`."""
        client = await cls.open(port, **kwargs)
        established = await client.receive()
        assert established["type"] == "connection_established", established
        return client, established

    async def send(self, message: Any) -> None:
        await self.connection.write_message(message if isinstance(message, (str, bytes))
                                            else json.dumps(message))

    async def receive_raw(self, timeout: float = RECEIVE_TIMEOUT) -> str | bytes | None:
        return await asyncio.wait_for(self.connection.read_message(), timeout)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        raw = await self.receive_raw(timeout)
        if raw is None:
            raise ConnectionError(f"closed: {self.connection.close_code} {self.connection.close_reason}")
        return json.loads(raw)

    async def receive_type(self, kind: str, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        """The next message of `kind`, skipping heartbeats only."""
        while True:
            message = await self.receive(timeout)
            if message["type"] != "heartbeat":
                assert message["type"] == kind, message
                return message

    async def subscribe(self, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "subscribe", **fields})
        return await self.receive_type("subscription_confirmed")

    async def events(self, count: int, timeout: float = RECEIVE_TIMEOUT) -> list[dict[str, Any]]:
        """The next `count` project events, skipping heartbeats."""
        received = []
        while len(received) < count:
            message = await self.receive(timeout)
            if message["type"] != "heartbeat":
                received.append(message)
        return received

    async def expect_silence(self, seconds: float = 0.3) -> None:
        """Nothing but heartbeats arrives for `seconds` (used after the awaited thing has happened)."""
        try:
            while True:
                message = await self.receive(seconds)
                assert message["type"] == "heartbeat", f"unexpected {message}"
        except asyncio.TimeoutError:
            return

    async def closed(self, timeout: float = RECEIVE_TIMEOUT) -> tuple[int | None, str | None]:
        """Read until the server closes; returns its close code and reason."""
        while await self.receive_raw(timeout) is not None:
            pass
        return self.connection.close_code, self.connection.close_reason

    def close(self) -> None:
        self.connection.close()


class StalledTransport:
    """A hub transport whose client takes bytes but never drains them, until the test says so: its
    queue stays pending. (The hub's transports are the handlers; this stands in for one to make the
    fault happen.)"""

    name = "websocket"

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, asyncio.Future]] = []
        self.closed_with: int | None = None

    def event_frame(self, event):
        return event.ws_frame

    def control_frame(self, kind, payload):
        from autopm_realtime.events import websocket_text_frame

        return websocket_text_frame(payload)

    def send(self, data):
        future = asyncio.get_running_loop().create_future()
        self.writes.append((data, future))
        return future

    def close_connection(self, code, reason):
        self.closed_with = code

    def drain(self) -> None:
        for _, future in self.writes:
            if not future.done():
                future.set_result(None)


class SseMessage(dict):
    """One parsed SSE message: `event` (None for unnamed), `id`, `data` (parsed JSON), `retry`."""


class SseClient:
    """Reads an SSE stream over a raw socket (HTTP/1.1, chunked), parsing messages as they arrive.

    A raw socket, not tornado's HTTP client, so that `close()` really disconnects."""

    opened: list[SseClient] = []

    def __init__(self, stream: IOStream) -> None:
        SseClient.opened.append(self)
        self.stream = stream
        self.messages: asyncio.Queue[SseMessage] = asyncio.Queue()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, query: str = "", headers: dict[str, str] | None = None) -> SseClient:
        stream = await TCPClient().connect("127.0.0.1", port)
        lines = [f"GET /api/v1/sse/events{query} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 "Accept: text/event-stream", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return cls(stream)

    @classmethod
    async def connected(cls, port: int, query: str = "", **kwargs: Any) -> tuple[SseClient, SseMessage]:
        client = await cls.open(port, query, **kwargs)
        first = await client.receive()
        assert first.get("retry") is not None, first
        established = await client.receive()
        assert established["event"] == "connection_established", established
        return client, established

    async def _read(self) -> None:
        try:
            head = (await self.stream.read_until(b"\r\n\r\n")).decode()
            status_line, *header_lines = head.strip().split("\r\n")
            self.status = int(status_line.split()[1])
            for line in header_lines:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            buffer = b""
            while True:
                size = int(await self.stream.read_until(b"\r\n"), 16)
                if size == 0:
                    break
                buffer += (await self.stream.read_bytes(size + 2))[:-2]
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self.messages.put_nowait(self._parse(block))
        except StreamClosedError:
            pass
        finally:
            self.ended.set_result(self.status)

    @staticmethod
    def _parse(block: bytes) -> SseMessage:
        message = SseMessage(event=None, id=None, data=None, retry=None)
        for line in block.decode().split("\n"):
            field, _, value = line.partition(": ")
            if field == "data":
                message["data"] = json.loads(value)
            elif field in ("event", "id", "retry"):
                message[field] = value
        return message

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> SseMessage:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def events(self, count: int, timeout: float = RECEIVE_TIMEOUT) -> list[SseMessage]:
        """The next `count` unnamed (project event) messages, skipping heartbeats."""
        received = []
        while len(received) < count:
            message = await self.receive(timeout)
            if message["event"] != "heartbeat":
                received.append(message)
        return received

    async def end_of_stream(self, timeout: float = RECEIVE_TIMEOUT) -> None:
        """Wait until the server ends the stream (last chunk or closed connection)."""
        await asyncio.wait_for(asyncio.shield(self.ended), timeout)

    def close(self) -> None:
        self.stream.close()


async def publish(client: AsyncHTTPClient, port: int, body: Any, *,
                  headers: dict[str, str] | None = None) -> HTTPResponse:
    """POST to /api/v1/events without raising on error statuses."""
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await client.fetch(f"http://127.0.0.1:{port}/api/v1/events", method="POST", body=raw,
                              headers={"Content-Type": "application/json", **(headers or {})},
                              raise_error=False)


def file_change(path: str = "src/main.py", project: str = "my-project", change: str = "modified"):
    return {"type": "file_change", "project_id": project,
            "data": {"file_path": path, "change_type": change}}


def risk(message: str, severity: str = "high", project: str = "my-project"):
    return {"type": "risk_alert", "project_id": project, "data": {"severity": severity, "message": message}}


def progress(percentage: float, completed: int, total: int, project: str = "my-project"):
    return {"type": "progress_update", "project_id": project,
            "data": {"progress_percentage": percentage, "completed_tasks": completed,
                     "total_tasks": total}}


async def eventually(condition, timeout: float = RECEIVE_TIMEOUT) -> None:
    """Poll state the test cannot await (a server's connection bookkeeping, a counter) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def free_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


def subscribed(service) -> list:
    """Connections with a filter; a WebSocket has an empty one until its `subscribe` is processed."""
    return [c for c in service.hub.connections() if c.filter.types != frozenset()]


@contextlib.asynccontextmanager
async def running_service(settings):
    """A standalone server (as `serve` runs it) in this process for the block; yields its service."""
    from autopm_realtime.server import StandaloneServer

    server = StandaloneServer(settings)
    await server.start()
    try:
        yield server.service
    finally:
        await server.stop()


STRICT_ENV = "AUTOPM_TEST_STRICT"


def require(available: bool, reason: str) -> None:
    """Skip when an external dependency (Node.js packages, Redis, Chromium) is missing — except under
    CI, where `.ci/run` sets AUTOPM_TEST_STRICT=1 and a missing dependency is a failure."""
    import pytest

    if available:
        return
    if os.environ.get(STRICT_ENV) == "1":
        pytest.fail(f"{reason} ({STRICT_ENV}=1, so this is a failure, not a skip)")
    pytest.skip(reason)


# --- the server as a subprocess ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0
SERVING = re.compile(r"autopm-realtime serving (http://127\.0\.0\.1:(\d+)/)")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autopm_realtime", *args]


def environment(**extra: str) -> dict[str, str]:
    """The test's environment, able to import the package from any working directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOPM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


class Process:
    """A long-running command; threads collect its output lines so that its pipes never fill up."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.popen = subprocess.Popen(command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env or environment(), cwd=cwd)
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []   # stderr lines read so far, for failure messages
        for pipe, lines in ((self.popen.stdout, self.stdout), (self.popen.stderr, self.stderr)):
            threading.Thread(target=self._collect, args=(pipe, lines), daemon=True).start()

    @staticmethod
    def _collect(pipe: Any, lines: queue.Queue[str | None]) -> None:
        for line in pipe:
            lines.put(line.rstrip("\n"))
        pipe.close()
        lines.put(None)   # the end of the output: the process has exited

    @staticmethod
    def _next(lines: queue.Queue[str | None], what: str) -> str:
        try:
            line = lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no {what} within {WAIT} s") from None
        if line is None:
            raise AssertionError(f"the process exited before its {what}")
        return line

    def stdout_line(self) -> str:
        return self._next(self.stdout, "output")

    def stderr_match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """Read stderr until a line matches; fails if the process exits first."""
        while True:
            try:
                line = self._next(self.stderr, f"log line {pattern.pattern!r}")
            except AssertionError as error:
                raise AssertionError(f"{error}; stderr: {self.seen}") from None
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match

    def remaining_stderr(self) -> list[str]:
        """The rest of stderr, to the end of the output: for a process that has exited or is exiting."""
        lines = []
        while (line := self.stderr.get(timeout=WAIT)) is not None:
            lines.append(line)
        return lines

    def stop(self) -> None:
        terminate(self.popen, WAIT)

    @classmethod
    def serve(cls, *args: str, **kwargs: Any) -> tuple[Process, str]:
        """`python -m autopm_realtime serve --port 0 ARGS`, once it logs its URL: (process, base URL)."""
        process = cls("serve", "--port", "0", *args, **kwargs)
        try:
            return process, process.stderr_match(SERVING).group(1)
        except BaseException:
            process.stop()
            raise


# --- a second in-process server, for settings a test builds itself --------------------------------

@contextlib.asynccontextmanager
async def serving(settings):
    """An in-process server (as the `port` fixture's, without sources) for `settings` built in the test
    itself, e.g. with a key file written to tmp_path; yields (service, port)."""
    from tornado.netutil import bind_sockets

    from autopm_realtime.server import make_http_server
    from autopm_realtime.service import RealtimeService

    service = RealtimeService(settings.validate(), run_sources=False)
    await service.start()
    server = make_http_server(service)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        yield service, sockets[0].getsockname()[1]
    finally:
        server.stop()
        await service.stop()
        await server.close_all_connections()


def serve_quietly(*args: str, log_level: str = "warning", **kwargs: Any) -> tuple[Process, int]:
    """`serve` on a free port with a quiet log (so its stderr holds only warnings and errors), once
    `/api/v1/health` answers: (process, port). `Process.serve` needs the info-level "serving" line."""
    import time
    import urllib.request

    port = free_port()
    process = Process("serve", "--port", str(port), "--log-level", log_level, *args, **kwargs)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1) as answer:
                if answer.status == 200:
                    return process, port
        except OSError:
            pass
        if process.popen.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise AssertionError(f"the server did not answer on port {port} within {WAIT} s "
                                 f"(exit status {process.popen.poll()})")
        time.sleep(0.05)


def drain_lines(lines: queue.Queue[str | None]) -> list[str]:
    """The lines a `Process` pipe has collected so far (without waiting for more)."""
    collected = []
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return collected
        if line is not None:
            collected.append(line)


def rss_bytes(pid: int) -> int:
    """A process's resident set size, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# --- Redis -------------------------------------------------------------------------------------

SCRATCH_REDIS_PASSWORD = "s3cret-pw"   # of the scratch servers, so tests can check that it never shows


def redis_answers(url: str) -> bool:
    """Whether a Redis answers PING at `url` within half a second (False without redis-py)."""
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class ScratchRedis:
    """A redis-server of the test's own on a free port, to kill and restart (never the machine's).

    `appendonly`: an append-only file fsynced on every write, so a SIGKILL loses nothing acknowledged."""

    def __init__(self, directory: Path, *, appendonly: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://:{SCRATCH_REDIS_PASSWORD}@127.0.0.1:{self.port}/0"
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                       else ["--appendonly", "no"])
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--requirepass", SCRATCH_REDIS_PASSWORD,
             "--logfile", str(self.directory / "redis.log"), *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self) -> None:
        await eventually(lambda: redis_answers(self.url))

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is saved on the way down."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


# --- Prometheus --------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by (name, labels); a series twice is an error."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in values, f"duplicate series {key}"
            values[key] = sample.value
    return values
