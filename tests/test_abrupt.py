"""A thousand clients that vanish without a goodbye: half WebSocket, half SSE, each dropped with an RST
(SO_LINGER 0, no close frame, no FIN). Against a server in its own process, so that its memory is its
own: the connections must be forgotten (stats, counters), the memory given back, and a drop in the middle
of a fan-out must neither log a traceback nor hurt the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import socket
import struct
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from support import WsClient, drain_lines, rss_bytes, serve_quietly

CONNECTIONS = 1000
OPENING_AT_ONCE = 64
MiB = 1024 * 1024
ROUNDS = 8                       # of opening and dropping CONNECTIONS, for the memory check
WARM_UP_ROUNDS = 4               # whose growth is the allocator's one-off steps, not judged
RSS_TOLERANCE = 6 * MiB          # from the end of the warm-up to the end of the last round
MEDIAN_GROWTH_TOLERANCE = MiB * 3 // 4
PROJECT = "p"
EVENT_MARK = b'"type":"file_change","id"'
BURST = 40       # events per publish, every PUBLISH_EVERY s: a rate the fan-out to 1,000 keeps up with
PUBLISH_EVERY = 0.25


def raise_open_files_limit(needed: int) -> None:
    """Both ends of every connection live on this machine: the test's sockets and, inherited by the
    server it starts, the server's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-files hard limit {hard} is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: (process, port). Its stderr (warnings and up) is checked by the tests."""
    raise_open_files_limit(4 * CONNECTIONS + 1024)
    project = tmp_path_factory.mktemp("abrupt")
    process, port = serve_quietly("--project", f"{project}={PROJECT}", "--no-watch", "--auto-commit", "off",
                                  "--publish-rate", "100000", "--publish-burst", "100000")
    yield process, port
    process.stop()


class RawClient:
    """A subscriber over a bare non-blocking socket, so that the test decides exactly how it goes away.
    It counts the event envelopes it reads (by their opening bytes) without keeping them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.events = 0
        self._tail = b""

    @classmethod
    async def open(cls, port: int, kind: str) -> RawClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        client = cls(sock)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if kind == "websocket":
                key = base64.b64encode(os.urandom(16))
                subscribe = json.dumps({"type": "subscribe", "event_types": ["file_change"],
                                        "project_id": PROJECT}).encode()
                await loop.sock_sendall(sock, b"GET /api/v1/dashboard/ws HTTP/1.1\r\nHost: x\r\n"
                                        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                                        + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
                                        + masked_text_frame(subscribe))
                await client.read_until(b"subscription_confirmed")
            else:
                await loop.sock_sendall(sock, f"GET /api/v1/sse/events?event_types=file_change&project_id="
                                              f"{PROJECT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await client.read_until(b"connection_established")
        except BaseException:
            sock.close()
            raise
        return client

    async def read_until(self, marker: bytes, timeout: float = 10.0) -> None:
        """Read until `marker` has gone by (markers are counted across reads, not inside one buffer)."""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
            assert chunk, f"the server closed the connection before {marker!r}"
            window = self._tail + chunk
            self.events += window.count(EVENT_MARK) - self._tail.count(EVENT_MARK)
            self._tail = window[-64:]
            if marker in window:
                return

    async def drain(self) -> None:
        """Keep reading (and counting events) until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return
            window = self._tail + chunk
            self.events += window.count(EVENT_MARK) - self._tail.count(EVENT_MARK)
            self._tail = window[-64:]

    def drop(self) -> None:
        """Go away at once: with SO_LINGER (on, 0 s) close() sends an RST and discards unsent data."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_clients(port: int, count: int) -> list[RawClient]:
    """Half WebSocket (subscribed), half SSE, `OPENING_AT_ONCE` handshakes in flight."""
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one(index: int) -> RawClient:
        async with gate:
            return await RawClient.open(port, "websocket" if index % 2 == 0 else "sse")

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    clients = [r for r in results if isinstance(r, RawClient)]
    failures = [r for r in results if not isinstance(r, RawClient)]
    if failures:
        for client in clients:
            client.drop()
        raise AssertionError(f"{len(failures)} of {count} connections failed, first: {failures[0]!r}")
    return clients


class Server:
    """What the test reads from the running server: stats, health, memory, log."""

    def __init__(self, process, port: int) -> None:
        self.process = process
        self.port = port
        self.http = AsyncHTTPClient(force_instance=True)
        self.log: list[str] = []

    async def get(self, path: str) -> dict[str, Any]:
        answer = await self.http.fetch(f"http://127.0.0.1:{self.port}{path}")
        return json.loads(answer.body)

    async def stats(self) -> dict[str, Any]:
        return await self.get("/api/v1/sse/stats")

    async def wait_for_connections(self, expected: int, timeout: float = 15.0) -> dict[str, Any]:
        """Poll the stats (bounded) until `total_connections` is `expected`; returns those stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if stats["total_connections"] == expected:
                return stats
            assert time.monotonic() < deadline, (
                f"total_connections is {stats['total_connections']}, not {expected}, after {timeout} s: "
                f"{stats}")
            await asyncio.sleep(0.05)

    def rss(self) -> int:
        return rss_bytes(self.process.popen.pid)

    async def settled_rss(self) -> int:
        """RSS once the server has been idle a moment (closing callbacks run, buffers freed)."""
        await asyncio.sleep(0.5)
        return self.rss()

    def new_log_lines(self) -> list[str]:
        lines = drain_lines(self.process.stderr)
        self.log.extend(lines)
        return lines

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def running(server):
    process, port = server
    assert process.popen.poll() is None, "the server has exited"
    watcher = Server(process, port)
    watcher.new_log_lines()   # only what this test causes is checked
    yield watcher
    watcher.close()


def assert_no_errors(lines: list[str]) -> None:
    bad = [line for line in lines if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]
    assert not bad, "the server logged errors:\n" + "\n".join(lines[:60])


async def round_of_drops(server: Server) -> dict[str, int]:
    """Open CONNECTIONS, see them all in the stats, drop them all with an RST, see them all gone.
    Returns the numbers, for the memory check."""
    before = (await server.wait_for_connections(0))["counters"]
    clients = await open_clients(server.port, CONNECTIONS)
    opened = await server.wait_for_connections(CONNECTIONS)
    assert opened["sse_connections"] == CONNECTIONS // 2, opened
    rss_open = server.rss()
    for client in clients:
        client.drop()
    after = (await server.wait_for_connections(0))["counters"]
    assert after["connections_opened"] - before["connections_opened"] == CONNECTIONS, (before, after)
    assert after["connections_closed"] - before["connections_closed"] == CONNECTIONS, (before, after)
    websocket = await server.get("/api/v1/dashboard/ws/stats")
    assert websocket["websocket_connections"] == 0 and websocket["message_queue_size"] == 0, websocket
    assert (await server.get("/api/v1/health"))["connections"] == 0
    return {"open": rss_open, "after": await server.settled_rss()}


@pytest.mark.slow
async def test_a_thousand_abrupt_drops_leave_no_connection_and_no_memory_behind(running):
    """A leak grows RSS by about the same amount every round, the last ones included; the allocator
    instead grows it in one-off steps and then stays flat. Those steps end by round 2 or 3 on CPython 3.11
    (5-7 MiB) and by round 4 or 5 on 3.13 (7-10 MiB, twice), so the rounds after WARM_UP_ROUNDS are judged:
    the median of their round-to-round growths is held to MEDIAN_GROWTH_TOLERANCE (0.75 MiB; measured 0.0-0.1
    MiB) — a leak of 1 KiB per connection would put every growth, and so the median, at about 1 MiB — and
    their whole growth to RSS_TOLERANCE."""
    start = await running.settled_rss()
    rounds = [await round_of_drops(running) for _ in range(ROUNDS)]
    numbers = f"RSS at start {start / MiB:.1f} MiB; " + "; ".join(
        f"round {n}: {r['open'] / MiB:.1f} MiB with {CONNECTIONS} open, {r['after'] / MiB:.1f} MiB after the drop"
        for n, r in enumerate(rounds, 1))
    print(numbers)
    after = [r["after"] for r in rounds[WARM_UP_ROUNDS - 1:]]
    growths = sorted(later - earlier for earlier, later in zip(after, after[1:]))
    median = growths[len(growths) // 2]
    assert median <= MEDIAN_GROWTH_TOLERANCE, (
        f"{numbers}: the median growth per round after round {WARM_UP_ROUNDS} is {median / MiB:+.2f} MiB "
        f"(tolerance {MEDIAN_GROWTH_TOLERANCE / MiB:.2f} MiB)")
    assert after[-1] - after[0] <= RSS_TOLERANCE, (
        f"{numbers}: rounds {WARM_UP_ROUNDS + 1}-{ROUNDS} grew {(after[-1] - after[0]) / MiB:+.1f} MiB "
        f"(tolerance {RSS_TOLERANCE / MiB:.0f} MiB)")
    assert_no_errors(running.new_log_lines())


async def test_clients_dropped_in_the_middle_of_a_fan_out(running):
    """Every client is reading a stream of events, and more are being published, when all of them
    vanish in waves: no traceback, every connection forgotten, and a new subscriber is served."""
    before = (await running.wait_for_connections(0))["counters"]
    clients = await open_clients(running.port, CONNECTIONS)
    await running.wait_for_connections(CONNECTIONS)
    readers = [asyncio.ensure_future(client.drain()) for client in clients]
    publishing = True
    published = 0

    async def publisher() -> None:
        nonlocal published
        batch = json.dumps([{"type": "file_change", "project_id": PROJECT,
                             "data": {"file_path": f"src/{i}.py", "change_type": "modified"}}
                            for i in range(BURST)])
        while publishing:
            answer = await running.http.fetch(f"http://127.0.0.1:{running.port}/api/v1/events", method="POST",
                                              body=batch, headers={"Content-Type": "application/json"})
            assert answer.code == 202
            published += BURST
            await asyncio.sleep(PUBLISH_EVERY)

    task = asyncio.ensure_future(publisher())
    try:
        deadline = time.monotonic() + 15
        while not all(client.events for client in clients):   # every client is in the middle of the stream
            assert time.monotonic() < deadline and not task.done(), (
                f"{sum(1 for c in clients if c.events)} of {CONNECTIONS} clients got an event")
            await asyncio.sleep(0.05)
        live = await running.stats()
        assert live["total_connections"] == CONNECTIONS, live   # none closed before the drops
        for start in range(0, CONNECTIONS, 100):   # dropped in waves while the publishes go on
            wave = range(start, start + 100)
            for index in wave:
                readers[index].cancel()
            await asyncio.gather(*(readers[index] for index in wave), return_exceptions=True)
            for index in wave:
                clients[index].drop()
            await asyncio.sleep(0.05)
        published_at_drop = published
        while published < published_at_drop + 2 * BURST:   # and the fan-out carries on after the last drop
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
    finally:
        publishing = False
        for reader in readers:
            reader.cancel()
        await task

    after = (await running.wait_for_connections(0))["counters"]
    assert after["connections_opened"] - before["connections_opened"] == CONNECTIONS, (before, after)
    assert after["connections_closed"] - before["connections_closed"] == CONNECTIONS, (before, after)
    sent_during_drops = after["messages_sent"] - live["counters"]["messages_sent"]
    print(f"{published} events published, {sent_during_drops} messages sent from the first drop on, "
          f"{after['slow_consumer_closes'] - before['slow_consumer_closes']} slow-consumer closes")
    assert sent_during_drops > 0, "no fan-out was under way while the clients dropped"
    assert (await running.get("/api/v1/health"))["status"] == "ok"

    ws, _ = await WsClient.connected(running.port)
    await ws.subscribe(event_types=["file_change"], project_id=PROJECT)
    answer = await running.http.fetch(
        f"http://127.0.0.1:{running.port}/api/v1/events", method="POST", headers={"Content-Type": "application/json"},
        body=json.dumps({"type": "file_change", "project_id": PROJECT,
                         "data": {"file_path": "after.py", "change_type": "created"}}))
    while True:   # events of the bursts may still be on their way; the new one comes last
        [event] = await ws.events(1)
        if event["id"] == json.loads(answer.body)["id"]:
            break
    ws.close()
    await running.wait_for_connections(0)
    assert_no_errors(running.new_log_lines())
