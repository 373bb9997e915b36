"""Test clients that speak the wire protocols over real sockets, and small helpers around them."""

from __future__ import annotations

import asyncio
import os
import json
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClientConnection, websocket_connect

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
                   path: str = "/api/v1/dashboard/ws") -> WsClient:
        request = HTTPRequest(f"ws://127.0.0.1:{port}{path}", headers=headers or {})
        client = cls(await websocket_connect(request))
        return client

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


def progress(percentage: float, completed: int, total: int, project: str = "my-project"):
    return {"type": "progress_update", "project_id": project,
            "data": {"progress_percentage": percentage, "completed_tasks": completed,
                     "total_tasks": total}}


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
