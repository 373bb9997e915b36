"""The hub: encode once per transport, one write per connection per loop turn, shutdown, SSE overflow."""

from __future__ import annotations

import asyncio
import json
import socket

from autopm_realtime.brokers.memory import MemoryBroker
from autopm_realtime.events import EventFilter, EventTypeRegistry, validate_publish
from autopm_realtime.connection import QueueLimits
from autopm_realtime.hub import Hub, PumpLimits

from support import SseClient, StalledTransport, WsClient, eventually, file_change, publish, with_settings


@with_settings(fanout_slice_ms=10_000.0)   # within one slice (tests/test_fanout.py checks the slicing)
async def test_a_burst_is_coalesced_into_one_write_per_connection(port, http, service, monkeypatch):
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change"])
    [connection] = service.hub.connections()
    writes = []
    original = connection.transport.send
    monkeypatch.setattr(connection.transport, "send", lambda data: writes.append(data) or original(data))
    await publish(http, port, [file_change(f"{i}.py") for i in range(50)])
    assert len(await ws.events(50)) == 50
    assert len(writes) == 1


async def test_stop_closes_every_connection_with_going_away(port, service):
    ws, _ = await WsClient.connected(port)
    sse, _ = await SseClient.connected(port)
    service.hub.stop()
    assert await ws.closed() == (1001, "server shutting down")
    await sse.end_of_stream()
    assert service.hub.connections() == []


@with_settings(queue_max_bytes=128 * 1024)
async def test_slow_sse_consumer_stream_is_ended(port, http, service):
    slow = socket.create_connection(("127.0.0.1", port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b"GET /api/v1/sse/events?event_types=file_change HTTP/1.1\r\nHost: x\r\n\r\n")
    fast, _ = await SseClient.connected(port, "?event_types=file_change")
    await eventually(lambda: len(service.hub.connections("sse")) == 2)
    batch = [file_change(f"{i}-" + "f" * 8000) for i in range(10)]
    published = 0
    while service.hub.stats.slow_consumer_closes == 0 and published < 10_000:
        await publish(http, port, batch)
        published += len(batch)
        assert len(await fast.events(len(batch))) == len(batch)
    assert service.hub.stats.slow_consumer_closes == 1
    assert len(service.hub.connections("sse")) == 1
    stats = json.loads((await http.fetch(f"http://127.0.0.1:{port}/api/v1/sse/stats")).body)
    assert stats["counters"]["slow_consumer_closes"] == 1
    slow.close()


async def test_replay_larger_than_the_queue_bound_is_paced_not_closed():
    """A resume may replay far more than one connection may queue. It goes out in slices that leave
    room for heartbeats, so a resuming client is not mistaken for a slow consumer."""
    broker = MemoryBroker()
    hub = Hub(broker, EventTypeRegistry(), limits=QueueLimits(max_messages=1000, max_bytes=256 * 1024))
    registry = EventTypeRegistry()
    [first] = await broker.publish([validate_publish(file_change("0.py"), registry)])
    big = [validate_publish(file_change(f"{i}-" + "x" * 60_000), registry) for i in range(100)]
    await broker.publish(big)
    transport = StalledTransport()
    connection = hub.connect(transport)
    confirmed = []
    resume = asyncio.ensure_future(hub.subscribe(connection, EventFilter(), first.id,
                                                 lambda *outcome: confirmed.append(outcome)))
    await asyncio.sleep(0)                         # the first slice is written and waits to drain
    for _ in range(20):
        hub.send_heartbeats()                      # heartbeats queue behind the stalled slice
    assert transport.closed_with is None and not connection.closed
    assert connection.pending_bytes <= 256 * 1024
    while not resume.done():
        transport.drain()
        await asyncio.sleep(0)
    assert confirmed == [(True, 100)]
    sent = b"".join(data for data, _ in transport.writes)
    assert sent.count(b'"type":"file_change"') == 100
    assert transport.closed_with is None


async def test_sockets_send_without_nagle_delay(port, service):
    """Writes are coalesced per loop turn already; Nagle's algorithm would hold small messages back
    until the client's delayed ACK (~40 ms)."""
    await WsClient.connected(port)
    await SseClient.connected(port)
    by_transport = {c.transport.name: c.transport for c in service.hub.connections()}
    sockets = [by_transport["websocket"].ws_connection.stream.socket,
               by_transport["sse"].request.connection.stream.socket]
    assert [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets] == [1, 1]


async def test_bursts_beyond_the_queue_bound_do_not_close_a_reader_that_keeps_up(port, http, service):
    """Three 1,000-event publishes at once queue 3,000 messages before any is flushed; the bound is
    1,000. The hub lets the socket take what it can before it calls anyone slow."""
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change"])
    sse, _ = await SseClient.connected(port, "?event_types=file_change")
    reading = asyncio.gather(ws.events(3000, timeout=10), sse.events(3000, timeout=10))
    batches = [[file_change(f"{b}-{i}.py") for i in range(1000)] for b in range(3)]
    replies = await asyncio.gather(*(publish(http, port, batch) for batch in batches))
    assert [r.code for r in replies] == [202, 202, 202]
    by_ws, by_sse = await reading
    assert len(by_ws) == len(by_sse) == 3000
    assert service.hub.stats.slow_consumer_closes == 0


async def test_under_overload_writes_do_not_wait_for_the_backlog_to_empty():
    """Events arriving faster than they can be offered must not hold every write back until the queues
    fill: once offering has used up a slice, the next slice writes first."""
    broker = MemoryBroker()
    hub = Hub(broker, EventTypeRegistry(), pump=PumpLimits(slice_seconds=1e-6))   # a few offers a slice
    hub.start()
    waiting_at_write = []

    class Recording(StalledTransport):
        def send(self, data):
            waiting_at_write.append(len(hub._backlog) + (hub._offering is not None))
            return None   # the kernel took it all

    for _ in range(50):
        hub.connect(Recording())
    registry = EventTypeRegistry()
    await broker.publish([validate_publish(file_change(f"{i}.py"), registry) for i in range(40)])
    await eventually(lambda: hub.stats.messages_sent == 40 * 50)
    hub.stop()
    assert waiting_at_write[0] > 0, "the first write waited until every event had been offered"


async def test_a_write_interval_makes_events_published_meanwhile_share_a_write():
    broker = MemoryBroker()
    hub = Hub(broker, EventTypeRegistry(), pump=PumpLimits(write_interval=0.2))
    hub.start()
    transport = StalledTransport()
    hub.connect(transport)
    registry = EventTypeRegistry()

    async def publish_one(name: str) -> None:
        await broker.publish([validate_publish(file_change(name), registry)])

    await publish_one("first.py")
    await eventually(lambda: len(transport.writes) == 1)   # the first round starts at once
    await publish_one("second.py")
    await asyncio.sleep(0.02)   # time passes between the two (without an interval, each is written alone)
    await publish_one("third.py")
    await eventually(lambda: len(transport.writes) == 2)
    hub.stop()
    assert [data.count(b'"file_change"') for data, _ in transport.writes] == [1, 2]
    assert transport.writes[1][0].index(b"second.py") < transport.writes[1][0].index(b"third.py")
