"""The fan-out fast path, counted rather than timed: encodes, offers and writes per publish, the
subscription index, and a burst that leaves room for other work."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from autopm_realtime import events as events_module
from autopm_realtime.connection import Connection
from autopm_realtime.events import Event, EventDraft, EventFilter
from autopm_realtime.subscriptions import SubscriptionIndex

from support import WsClient, file_change, progress, publish, with_settings

EVENT_MARK = b'"type":"file_change","id"'


class RawSubscriber:
    """A bare-socket subscriber, cheap enough to open a thousand of in one test: it counts events by
    their envelope's opening bytes and never parses them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""

    @classmethod
    async def websocket(cls, port: int, subscribe: dict) -> RawSubscriber:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /api/v1/dashboard/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13"
                     b"\r\n\r\n" + masked_text_frame(json.dumps({"type": "subscribe", **subscribe}).encode()))
        subscriber = cls(reader, writer)
        await subscriber.read_until(b"subscription_confirmed")
        return subscriber

    @classmethod
    async def sse(cls, port: int, query: str) -> RawSubscriber:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v1/sse/events?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        subscriber = cls(reader, writer)
        await subscriber.read_until(b"connection_established")
        return subscriber

    async def read_until(self, marker: bytes, count: int = 1) -> None:
        while self.received.count(marker) < count:
            chunk = await asyncio.wait_for(self.reader.read(65536), 10)
            assert chunk, f"stream ended before {count} x {marker!r}"
            self.received += chunk

    def close(self) -> None:
        self.writer.close()


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_subscribers(port: int, count: int, project: str) -> list[RawSubscriber]:
    """Half WebSocket, half SSE, all wanting `file_change` of `project`, opened 50 at a time."""
    gate = asyncio.Semaphore(50)

    async def one(index: int) -> RawSubscriber:
        async with gate:
            if index % 2:
                return await RawSubscriber.sse(port, f"event_types=file_change&project_id={project}")
            return await RawSubscriber.websocket(port, {"event_types": ["file_change"], "project_id": project})
    return list(await asyncio.gather(*(one(i) for i in range(count))))


@pytest.fixture
def raw_subscribers():
    opened: list[RawSubscriber] = []
    yield opened
    for subscriber in opened:
        subscriber.close()


@with_settings(queue_max_messages=100, fanout_slice_ms=10_000.0)   # one slice: no write waits for the clock
async def test_a_publish_to_a_thousand_connections_is_bounded_work(port, http, service, monkeypatch,
                                                                     raw_subscribers):
    """One encode of each kind per event, one offer per matching connection and none for the others,
    and one write per connection for the whole batch — counted, not timed."""
    matching = await open_subscribers(port, 1000, "my-project")
    others = await open_subscribers(port, 200, "other-project")
    raw_subscribers.extend(matching + others)
    calls = {"json": 0, "ws": 0, "sse": 0, "offers": 0, "filter_checks": 0}
    for name, key in (("dumps", "json"), ("websocket_text_frame", "ws"), ("sse_frame", "sse")):
        original = getattr(events_module, name)

        def counting(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(events_module, name, counting)
    original_offer = Connection.offer

    def counting_offer(self, event):
        calls["offers"] += 1
        return original_offer(self, event)
    monkeypatch.setattr(Connection, "offer", counting_offer)
    original_matches = EventFilter.matches

    def counting_matches(self, event):
        calls["filter_checks"] += 1
        return original_matches(self, event)
    monkeypatch.setattr(EventFilter, "matches", counting_matches)
    stats = service.hub.stats
    writes_before, messages_before = stats.writes, stats.messages_sent

    batch = [file_change(f"src/{i}.py") for i in range(10)]
    assert (await publish(http, port, batch)).code == 202
    await asyncio.gather(*(s.read_until(EVENT_MARK, len(batch)) for s in matching))

    assert calls["json"] == 2 * len(batch)   # validation measures each event, then its envelope once
    assert calls["ws"] == len(batch) and calls["sse"] == len(batch)
    assert calls["offers"] == len(batch) * len(matching)
    assert calls["filter_checks"] == 0   # the index found them: no connection's filter was tried
    assert stats.messages_sent - messages_before == len(batch) * len(matching)
    assert stats.writes - writes_before == len(matching)
    assert all(EVENT_MARK not in s.received for s in others)


@with_settings(fanout_slice_ms=1.0, queue_max_messages=2000, queue_max_bytes=2 * 1024 * 1024)
async def test_a_burst_yields_to_new_connections_and_pings(port, http, service, raw_subscribers):
    """While a burst is being delivered, a new WebSocket gets its handshake and a pong: the pump works
    in slices. Without them the whole burst would be delivered before the handshake is even read."""
    subscribers = await open_subscribers(port, 200, "my-project")
    raw_subscribers.extend(subscribers)
    burst = [file_change(f"f{i}.py") for i in range(1000)]
    total = len(burst) * len(subscribers)
    sent_before = service.hub.stats.messages_sent
    readers = asyncio.gather(*(s.read_until(EVENT_MARK, len(burst)) for s in subscribers))
    assert (await publish(http, port, burst)).code == 202
    assert service.hub.stats.messages_sent - sent_before < total   # the burst is still under way

    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "ping", "id": 1})
    pong = await ws.receive_type("pong")
    delivered_at_pong = service.hub.stats.messages_sent - sent_before
    await readers
    assert pong["id"] == 1
    assert delivered_at_pong < total, "the pong waited for the whole burst"
    assert service.hub.stats.messages_sent - sent_before == total + 2   # and the greeting and the pong


# --- the subscription index ------------------------------------------------------------------

TYPES = ("file_change", "progress_update", "risk_alert", "commit")
PROJECTS = ("alpha", "beta", "gamma")


def make_event(event_type: str, project: str, position: int) -> Event:
    draft = EventDraft(event_type, project, "2026-01-01T00:00:00Z", {})
    return Event(draft, str(position), position)


filters = st.builds(EventFilter,
                    types=st.one_of(st.none(), st.frozensets(st.sampled_from(TYPES))),
                    project_id=st.one_of(st.none(), st.sampled_from(PROJECTS)))


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(filters, min_size=1, max_size=30), st.data())
def test_the_index_finds_exactly_the_connections_a_filter_scan_would(member_filters, data):
    """Against the plain scan it replaces: every member whose filter matches, each once, after adds,
    filter changes and removals."""
    index: SubscriptionIndex[int] = SubscriptionIndex()
    current: dict[int, EventFilter] = {}
    for member, event_filter in enumerate(member_filters):
        index.add(member, event_filter)
        current[member] = event_filter
    for member in data.draw(st.lists(st.sampled_from(sorted(current)), max_size=10)):
        new_filter = data.draw(filters)
        index.remove(member, current[member])
        index.add(member, new_filter)
        current[member] = new_filter
    for member in data.draw(st.lists(st.sampled_from(sorted(current)), max_size=5, unique=True)):
        index.remove(member, current.pop(member))
    for position, (event_type, project) in enumerate(
            (t, p) for t in TYPES for p in (*PROJECTS, "unknown")):
        event = make_event(event_type, project, position)
        found = index.matching(event)
        assert len(found) == len(set(found))
        assert sorted(found) == sorted(m for m, f in current.items() if f.matches(event))


def test_an_empty_type_set_is_in_no_bucket():
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("silent", EventFilter(types=frozenset()))
    assert index.matching(make_event("file_change", "alpha", 1)) == []
    index.remove("silent", EventFilter(types=frozenset()))
    assert index._buckets == {}


async def test_unsubscribe_and_resubscribe_move_a_connection_between_buckets(port, http):
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change"])
    await ws.send({"type": "unsubscribe", "event_types": ["file_change"]})
    await ws.receive_type("unsubscription_confirmed")
    await publish(http, port, [file_change("ignored.py")])
    await ws.subscribe(event_types=["progress_update"], project_id="my-project")
    await publish(http, port, [file_change("still-ignored.py"), progress(50, 1, 2)])
    [event] = await ws.events(1)
    assert event["type"] == "progress_update"
    await ws.expect_silence()


@with_settings(websocket_compression=True)
async def test_compression_is_negotiated_only_when_enabled_and_then_per_connection(port, http, service):
    """A client that asks for permessage-deflate gets deflated frames (fewer bytes than the event);
    one that does not ask still gets the shared, uncompressed frames."""
    compressed, _ = await WsClient.connected(port, compression_options={})
    plain, _ = await WsClient.connected(port)
    for client in (compressed, plain):
        await client.subscribe(event_types=["file_change"])
    assert compressed.connection.protocol._compressor is not None
    assert plain.connection.protocol._compressor is None
    sent_before = service.hub.stats.bytes_sent
    big = file_change("src/" + "module/" * 200 + "x.py")
    await publish(http, port, [big])
    [one] = await compressed.events(1)
    [two] = await plain.events(1)
    assert one == two and one["data"]["file_path"] == big["data"]["file_path"]
    frame_bytes = service.hub.stats.bytes_sent - sent_before
    assert frame_bytes < 2 * len(json.dumps(one)) - 1000   # the compressed copy is far smaller


async def test_compression_is_off_by_default(port):
    client, _ = await WsClient.connected(port, compression_options={})
    assert client.connection.protocol._compressor is None
