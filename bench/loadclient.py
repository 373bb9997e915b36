"""The fan-out benchmark's load client: many subscribers per process on raw asyncio sockets.

Why raw sockets: a general client (tornado.websocket, aiohttp) spends more CPU per message than the server
does to send it, and the benchmark would then measure the client. Here a subscriber is one
`asyncio.BufferedProtocol` that does per message only what it must: step over WebSocket frame headers (SSE needs
not even that). Everything else runs once per read over all the complete messages in it: one regex pass
pulls out the two numbers the publisher put in every event (`bench_seq`, `sent_ns`), and one list
comparison checks that they are exactly the next sequence numbers expected. Only a gap, a repeat or a
reordering falls back to looking at events one by one.

What is common to WebSocket and SSE (connecting, the HTTP response head, counting, latency, completion)
lives in `Subscriber`; a `Wire` holds only what differs: the request, the check of the response head, and
how the body splits into complete messages. A `mixed` client alternates the two, subscriber by subscriber.

The same client measures a resume (the replay benchmark): given a last event id, a subscriber asks for
what it missed (the WebSocket's `subscribe` carries `last_event_id`; the SSE GET carries `Last-Event-ID`),
and the report says when that request went out.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, Protocol

PROJECT_ID = "bench"
EVENT_TYPE = "progress_update"
EVENT_PREFIX = b'{"type":"' + EVENT_TYPE.encode() + b'",'   # how every event envelope starts
MARK = re.compile(rb'"bench_seq":(\d+),"sent_ns":(\d+)')        # the publisher's two numbers
SSE_CONTROL = re.compile(rb"^event: [^\n]*\ndata: ([^\n]*)$", re.MULTILINE)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_BUFFER_BYTES = 256 * 1024   # one per process: the loop reads one socket at a time
CONNECT_CONCURRENCY = 50       # below Tornado's listen backlog (128), so no SYN is dropped and retried
READY_TIMEOUT_SECONDS = 60.0


class Split(NamedTuple):
    """What a wire found at the start of its buffer."""

    region: bytes            # complete messages; events appear in it verbatim, in order
    controls: list[bytes]    # the JSON of each control message among them
    used: int                # bytes of the buffer consumed
    ended: str | None        # why the server ended the stream, None while it is open


class Wire(Protocol):
    """What differs between transports, for one subscriber."""

    ready_type: str            # the control message after which the subscription is live
    event_bytes: int | None    # the length of the first event envelope seen (the server's own encoding)

    def request(self, port: int) -> bytes:
        """The HTTP request that opens the stream."""

    def check_head(self, status: int, headers: dict[str, str]) -> str | None:
        """A complaint about the response head, or None when the stream may be read."""

    def split(self, buffer: bytearray) -> Split:
        """The complete messages at the start of `buffer` (the body, after the response head)."""

    def on_control(self, message: dict[str, Any], subscriber: Subscriber) -> None:
        """React to a control message (the WebSocket subscribes after `connection_established`)."""


class WebSocketWire:
    """RFC 6455 by hand: a masked subscribe frame out, unmasked text frames in."""

    ready_type = "subscription_confirmed"

    def __init__(self, last_event_id: str | None) -> None:
        self._key = base64.b64encode(os.urandom(16))
        self._last_event_id = last_event_id
        self.event_bytes: int | None = None

    def request(self, port: int) -> bytes:
        return (b"GET /api/v1/dashboard/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                % (port, self._key))

    def check_head(self, status: int, headers: dict[str, str]) -> str | None:
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest()).decode()
        if status != 101:
            return f"handshake answered {status}"
        if headers.get("sec-websocket-accept") != accept:
            return "handshake: wrong Sec-WebSocket-Accept"
        return None

    def split(self, buffer: bytearray) -> Split:
        controls: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            first, length = buffer[pos], buffer[pos + 1]
            head = 2
            if length == 126:
                head, length = 4, int.from_bytes(buffer[pos + 2:pos + 4], "big")
            elif length == 127:
                head, length = 10, int.from_bytes(buffer[pos + 2:pos + 10], "big")
            elif length > 127:
                return Split(bytes(buffer[:pos]), controls, pos, "protocol: server frame is masked")
            stop = pos + head + length
            if end - pos < head or stop > end:
                break
            if first != 0x81:
                payload = bytes(buffer[pos + head:stop])
                why = (f"close {int.from_bytes(payload[:2], 'big') if len(payload) >= 2 else 1005} "
                       f"{payload[2:].decode(errors='replace')}".strip() if first == 0x88
                       else f"protocol: unexpected frame byte 0x{first:02x}")
                return Split(bytes(buffer[:pos]), controls, stop, why)
            if not buffer.startswith(EVENT_PREFIX, pos + head):
                controls.append(bytes(buffer[pos + head:stop]))
            elif self.event_bytes is None:
                self.event_bytes = length
            pos = stop
        return Split(bytes(buffer[:pos]), controls, pos, None)

    def on_control(self, message: dict[str, Any], subscriber: Subscriber) -> None:
        if message.get("type") == "connection_established":
            subscribe: dict[str, Any] = {"type": "subscribe", "event_types": [EVENT_TYPE],
                                         "project_id": PROJECT_ID}
            if self._last_event_id is not None:
                subscribe["last_event_id"] = self._last_event_id
            subscriber.subscribe(masked_text_frame(json.dumps(subscribe).encode()))


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame: RFC 6455 requires clients to mask every frame."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes((0x81, 0x80 | length)) if length < 126 else bytes((0x81, 0xFE)) + length.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


class SseWire:
    """A long HTTP/1.1 GET: the body is chunked, and the de-chunked text is `\\n\\n`-separated messages
    (`id:` + `data:` for events; `event:` + `data:` for control messages; a bare `retry:`)."""

    ready_type = "connection_established"

    def __init__(self, last_event_id: str | None) -> None:
        self._text = bytearray()   # de-chunked body not yet split into messages
        self._resume = b"" if last_event_id is None else b"Last-Event-ID: %s\r\n" % last_event_id.encode()
        self.event_bytes: int | None = None

    def request(self, port: int) -> bytes:
        return (b"GET /api/v1/sse/events?event_types=%s&project_id=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Accept: text/event-stream\r\n%s\r\n"
                % (EVENT_TYPE.encode(), PROJECT_ID.encode(), port, self._resume))

    def check_head(self, status: int, headers: dict[str, str]) -> str | None:
        if status != 200:
            return f"GET answered {status}"
        if headers.get("transfer-encoding", "").lower() != "chunked":
            return "the SSE response is not chunked"
        return None

    def split(self, buffer: bytearray) -> Split:
        pos, ended = 0, None
        while (line_end := buffer.find(b"\r\n", pos)) >= 0:
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            pos = start + size + 2
            if size == 0:
                ended = "stream ended"
                break
            self._text += buffer[start:start + size]
        cut = self._text.rfind(b"\n\n") + 2
        region = bytes(self._text[:cut])
        del self._text[:cut]
        if self.event_bytes is None and (start := region.find(EVENT_PREFIX)) >= 0:
            self.event_bytes = region.find(b"\n", start) - start   # the `data:` line holds the envelope
        # The line-anchored regex costs more than the rest of a read, and control messages are rare:
        # look for them only where a plain substring search finds one may be.
        controls = SSE_CONTROL.findall(region) if b"event: " in region else []
        return Split(region, controls, pos, ended)

    def on_control(self, message: dict[str, Any], subscriber: Subscriber) -> None:
        pass


WIRES: dict[str, type[WebSocketWire] | type[SseWire]] = {"ws": WebSocketWire, "sse": SseWire}
TRANSPORTS = (*WIRES, "mixed")


def make_wire(transport: str, index: int, last_event_id: str | None) -> Wire:
    """`mixed` alternates by subscriber index (even: WebSocket, odd: SSE), so every client process carries
    half of each and a server's cost per connection is the average of the two."""
    if transport == "mixed":
        transport = ("ws", "sse")[index % 2]
    return WIRES[transport](last_event_id)


@dataclass
class Tally:
    """What one client process saw, summed over its subscribers."""

    events: int
    deliveries: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    malformed: int = 0
    complete: int = 0
    ended: int = 0
    last_delivery_ns: int = 0
    subscribed_ns: int = 0     # when the latest subscription request went out (what a replay is timed from)
    controls: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)   # why streams ended before completion
    latencies_ns: array.array = field(default_factory=lambda: array.array("q"))
    expected: list[bytes] = field(init=False)   # b"0", b"1", ...: what `bench_seq` should read, in order
    ones: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.expected = [str(seq).encode() for seq in range(self.events)]
        self.ones = b"\x01" * self.events


class Subscriber(asyncio.BufferedProtocol):
    """One subscription: open, subscribe, then check every event by its `bench_seq`.

    A buffered protocol, so that every read goes into the process's one `read_buffer` (`recv_into`):
    a plain protocol's `recv(256 KiB)` allocates and frees that much per read, which cost more client
    CPU than all the parsing here."""

    read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))

    def __init__(self, wire: Wire, port: int, tally: Tally, sample_latency: bool) -> None:
        self.wire = wire
        self.port = port
        self.tally = tally
        self.sample_latency = sample_latency
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seen = bytearray(tally.events)   # 1 where that sequence number arrived
        self.next = 0                         # the sequence number expected next
        self.distinct = 0
        self.head_done = False
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.subscribe(self.wire.request(self.port))   # for SSE the GET is the subscription

    def subscribe(self, data: bytes) -> None:
        """Send a subscription request (the SSE GET, the WebSocket `subscribe`), noting when it went out."""
        if self.transport is not None:
            self.tally.subscribed_ns = time.monotonic_ns()
            self.transport.write(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic_ns()   # one read, one arrival time for every message in it
        self.buffer += self.read_buffer[:nbytes]
        if not self.head_done and not self._read_head():
            return
        split = self.wire.split(self.buffer)
        del self.buffer[:split.used]
        if split.region:
            self._events(split.region, now)
        for control in split.controls:
            self._control(json.loads(control))
        if split.ended:
            self._end(split.ended)

    def _read_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        status_line, *lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        del self.buffer[:end + 4]
        complaint = self.wire.check_head(int(status_line.split()[1]), headers)
        if complaint:
            self._end(complaint)
            return False
        self.head_done = True
        return True

    def _events(self, region: bytes, now: int) -> None:
        """All the events of one read at once; they should be exactly the next sequence numbers."""
        tally = self.tally
        marks = MARK.findall(region)
        tally.malformed += region.count(EVENT_PREFIX) - len(marks)
        if not marks:
            return
        count, start = len(marks), self.next
        if [seq for seq, _ in marks] == tally.expected[start:start + count]:
            self.seen[start:start + count] = tally.ones[:count]
            self.next += count
            self.distinct += count
        else:
            self._out_of_line(marks)
        tally.deliveries += count
        tally.last_delivery_ns = now
        if self.sample_latency:
            tally.latencies_ns.extend([now - int(sent) for _, sent in marks])
        if self.distinct == tally.events and not self.finished:
            self.finished = True
            tally.complete += 1

    def _out_of_line(self, marks: list[tuple[bytes, bytes]]) -> None:
        """The slow path: count gaps, repeats and reorderings one event at a time."""
        tally = self.tally
        for raw, _ in marks:
            seq = int(raw)
            if not 0 <= seq < tally.events:
                tally.malformed += 1
                continue
            if self.seen[seq]:
                tally.duplicates += 1
                continue
            if seq < self.next:
                tally.out_of_order += 1
            self.seen[seq] = 1
            self.distinct += 1
            self.next = max(self.next, seq + 1)

    def _control(self, message: dict[str, Any]) -> None:
        kind = str(message.get("type"))
        self.tally.controls[kind] += 1
        self.wire.on_control(message, self)
        if kind == self.wire.ready_type and not self.ready.done():
            self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"connection lost: {exc}" if exc else "connection closed")

    def _end(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if not self.finished:
            self.finished = True
            self.tally.ended += 1
            self.tally.endings[why] += 1
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True)
class ClientSpec:
    """One client process's share of the subscribers."""

    transport: str             # "ws", "sse" or "mixed"
    port: int
    first: int                 # global index of its first subscriber
    count: int
    events: int
    latency_stride: int        # record latencies for subscribers whose index is a multiple of this
    stall_seconds: float
    last_event_id: str | None = None   # resume after this event: the server replays what came after it


def raise_open_files_limit(needed: int) -> None:
    """Each subscriber is a file descriptor; the soft limit is often 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def cpu_times() -> tuple[float, float]:
    """This process's user and system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def run_queue_seconds() -> float:
    """How long this (single-threaded) process has been runnable but without a core: a client starved by
    the machine's other work keeps a low CPU % and still falls behind, and this is what shows it."""
    try:
        return int(open("/proc/self/schedstat").read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def client_main(pipe: Connection, spec: ClientSpec) -> None:
    """Process entry: connect, say "ready", count until every event arrived or the stream stalls, report."""
    raise_open_files_limit(spec.count + 256)
    pipe.send(asyncio.run(_run(pipe, spec)))
    pipe.close()


async def _run(pipe: Connection, spec: ClientSpec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tally = Tally(spec.events)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    subscribers: list[Subscriber] = []

    async def open_one(index: int) -> None:
        async with gate:
            sample = index % spec.latency_stride == 0
            wire = make_wire(spec.transport, index, spec.last_event_id)
            _, subscriber = await loop.create_connection(
                lambda: Subscriber(wire, spec.port, tally, sample), "127.0.0.1", spec.port)
            subscribers.append(subscriber)
            await asyncio.wait_for(asyncio.shield(subscriber.ready), READY_TIMEOUT_SECONDS)

    started = time.monotonic()
    results = await asyncio.gather(*(open_one(spec.first + i) for i in range(spec.count)),
                                   return_exceptions=True)
    failures = Counter(f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException))
    pipe.send({"ready": spec.count - sum(failures.values()), "connect_seconds": time.monotonic() - started,
               "connect_failures": dict(failures)})

    published = asyncio.Event()
    loop.add_reader(pipe.fileno(), lambda: (pipe.recv(), published.set()))
    cpu_before, waiting_before = cpu_times(), run_queue_seconds()
    await _wait_until_finished(tally, len(subscribers), published, spec.stall_seconds)
    cpu_after, waiting = cpu_times(), run_queue_seconds() - waiting_before
    user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    cpu_used = user + system
    loop.remove_reader(pipe.fileno())
    for subscriber in subscribers:
        if subscriber.transport is not None:
            subscriber.transport.abort()
    return {"subscribers": spec.count, "connect_failures": dict(failures), "deliveries": tally.deliveries,
            "missing": spec.events * spec.count - sum(s.distinct for s in subscribers),
            "duplicates": tally.duplicates, "out_of_order": tally.out_of_order, "malformed": tally.malformed,
            "complete": tally.complete, "ended_early": tally.ended, "endings": dict(tally.endings),
            "controls": dict(tally.controls), "cpu_seconds": cpu_used, "cpu_user_system": [user, system],
            "waiting_seconds": waiting,
            "last_delivery_ns": tally.last_delivery_ns, "subscribed_ns": tally.subscribed_ns,
            "event_bytes": next((s.wire.event_bytes for s in subscribers if s.wire.event_bytes), None),
            "latencies_ns": tally.latencies_ns.tobytes()}


async def _wait_until_finished(tally: Tally, subscribers: int, published: asyncio.Event,
                               stall_seconds: float) -> None:
    """Done, once the parent has published everything, when every subscriber has every event or has
    ended, or when nothing has arrived for `stall_seconds` (the rest is then reported missing)."""
    await published.wait()
    published_ns = time.monotonic_ns()
    while tally.complete + tally.ended < subscribers:
        await asyncio.sleep(0.02)
        if time.monotonic_ns() - max(published_ns, tally.last_delivery_ns) > stall_seconds * 1e9:
            return
