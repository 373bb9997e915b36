"""The hub owns connections: who wants what, a bounded outgoing queue each, one heartbeat, and stats.

Transports (the WebSocket and SSE handlers) hand the hub a `Transport`; the hub hands back a
`Connection` and from then on writes to it. Every event is encoded once per transport (the bytes live on
the `Event`) and the same bytes are queued for every matching connection. Queued bytes are flushed in one
write per connection per IOLoop turn.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from tornado.ioloop import IOLoop, PeriodicCallback

from .brokers import Broker
from .events import Event, EventFilter, EventTypeRegistry, control_message, utc_now_iso

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_QUEUE_MAX_MESSAGES = 1_000
DEFAULT_QUEUE_MAX_BYTES = 4 * 1024 * 1024
SLOW_CONSUMER_CLOSE_CODE = 4008
GOING_AWAY_CLOSE_CODE = 1001


class Transport(Protocol):
    """What the hub needs from a wire protocol handler."""

    name: str   # "websocket" or "sse"

    def event_frame(self, event: Event) -> bytes:
        """The event's bytes for this protocol (one of the `Event`'s cached frames)."""

    def control_frame(self, kind: str, payload: bytes) -> bytes:
        """A control message (`payload` is its JSON) framed for this protocol."""

    def send(self, data: bytes) -> asyncio.Future[Any] | None:
        """Write already framed bytes to the connection's IOStream. The future is done as soon as the
        kernel has taken them (at once, for a client that keeps up); None when the stream is closed."""

    def close_connection(self, code: int, reason: str) -> None:
        """End the connection: a WebSocket closes with `code`; an SSE stream just ends."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Per connection: queued plus in-flight messages and bytes beyond which it is a slow consumer."""

    max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES
    max_bytes: int = DEFAULT_QUEUE_MAX_BYTES


class Connection:
    """One subscriber's filter and outgoing queue. Small on purpose: there may be thousands."""

    __slots__ = ("id", "transport", "filter", "_hub", "_queue", "_queued_bytes", "_inflight",
                 "_inflight_bytes", "_inflight_messages", "_held", "_last_position", "closed")

    def __init__(self, hub: Hub, connection_id: str, transport: Transport, event_filter: EventFilter):
        self.id = connection_id
        self.transport = transport
        self.filter = event_filter
        self._hub = hub
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._inflight: collections.deque[tuple[asyncio.Future[Any], int, int]] = collections.deque()
        self._inflight_bytes = 0   # written to the stream, not yet taken by the kernel
        self._inflight_messages = 0
        self._held: list[Event] | None = None   # live events kept back while a resume replays history
        self._last_position: Any = None          # of the last event sent, to drop replay duplicates
        self.closed = False

    @property
    def pending_messages(self) -> int:
        """Messages queued here or still in the stream's buffer: what the client has not yet taken."""
        self._settle()
        return len(self._queue) + self._inflight_messages

    @property
    def pending_bytes(self) -> int:
        self._settle()
        return self._queued_bytes + self._inflight_bytes

    def send_control(self, kind: str, **fields: Any) -> None:
        self.enqueue(self.transport.control_frame(kind, control_message(kind, **fields)))

    def offer(self, event: Event) -> None:
        """A live event that matches this connection's filter."""
        if self._held is not None:
            self._held.append(event)
            if len(self._held) > self._hub.limits.max_messages:
                self._overflow()
        elif self._last_position is None or event.position > self._last_position:
            self._last_position = event.position
            self.enqueue(self.transport.event_frame(event))

    def enqueue(self, frame: bytes) -> None:
        """Queue framed bytes; a connection over its limits is closed as a slow consumer."""
        if self.closed:
            return
        if self._would_overflow(len(frame)):
            self.flush()   # a burst within one loop turn: let the socket take what it can first
            if self._would_overflow(len(frame)):
                self._overflow()
                return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._hub.schedule_flush(self)

    def _would_overflow(self, size: int) -> bool:
        limits = self._hub.limits
        return (self.pending_messages + 1 > limits.max_messages
                or self.pending_bytes + size > limits.max_bytes)

    def _overflow(self) -> None:
        log.warning("connection %s (%s) is a slow consumer: %d messages, %d bytes pending; closing",
                    self.id, self.transport.name, self.pending_messages, self.pending_bytes)
        self._hub.stats.slow_consumer_closes += 1
        self.discard_queue()
        self.transport.close_connection(SLOW_CONSUMER_CLOSE_CODE, "slow consumer")
        self._hub.disconnect(self)

    def discard_queue(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self._held = None

    def flush(self) -> None:
        if self.closed or not self._queue:
            return
        data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
        count = len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self._write(data, count)

    def _write(self, data: bytes, count: int) -> asyncio.Future[Any] | None:
        future = self.transport.send(data)
        if future is None:
            return None
        self._inflight_bytes += len(data)
        self._inflight_messages += count
        self._hub.stats.messages_sent += count
        self._hub.stats.bytes_sent += len(data)
        self._inflight.append((future, len(data), count))
        return future

    def _settle(self) -> None:
        """Forget writes the kernel has taken. Stream writes complete in order, so only the oldest
        can be done."""
        while self._inflight and self._inflight[0][0].done():
            future, size, count = self._inflight.popleft()
            self._inflight_bytes -= size
            self._inflight_messages -= count
            if not future.cancelled():
                future.exception()   # a closed stream is reported by the transport's close, not here

    async def replay(self, events: list[Event]) -> None:
        """Write history events in slices of at most half the queue's bounds, waiting for each slice to
        drain, then release the live events that arrived meanwhile, minus those already replayed.

        Half, so that heartbeats and replies queued while a slice is in flight still fit."""
        max_bytes = self._hub.limits.max_bytes // 2
        max_messages = max(1, self._hub.limits.max_messages // 2)
        index = 0
        while index < len(events):
            if self.closed:
                return
            self.flush()   # anything queued before (the confirmation) goes first
            frames: list[bytes] = []
            size = 0
            while index < len(events) and len(frames) < max_messages and (
                    not frames or size + len(self.transport.event_frame(events[index])) <= max_bytes):
                frames.append(self.transport.event_frame(events[index]))
                size += len(frames[-1])
                index += 1
            self._last_position = events[index - 1].position
            future = self._write(b"".join(frames), len(frames))
            if future is not None:
                try:
                    await future
                except Exception:   # the stream closed under us; the transport's close cleans up
                    return
        self._hub.stats.replayed_events += len(events)
        self.release_held()

    def hold_live_events(self) -> None:
        self._held = []

    def release_held(self) -> None:
        held, self._held = self._held or [], None
        for event in held:
            self.offer(event)


@dataclass(slots=True)
class HubStats:
    """Monotonic counters since start, for the stats endpoints (and `/metrics` later)."""

    connections_opened: int = 0
    connections_closed: int = 0
    events_received: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    slow_consumer_closes: int = 0
    resumes_recovered: int = 0
    resumes_lost: int = 0
    replayed_events: int = 0
    heartbeats: int = 0


class Hub:
    """Fans broker events out to connections; one instance per server process."""

    def __init__(self, broker: Broker, registry: EventTypeRegistry, *,
                 heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
                 limits: QueueLimits = QueueLimits()) -> None:
        if heartbeat_seconds <= 0:
            raise ValueError("heartbeat interval must be positive")
        self.broker = broker
        self.registry = registry
        self.heartbeat_seconds = heartbeat_seconds
        self.limits = limits
        self.stats = HubStats()
        self._connections: dict[str, Connection] = {}
        self._dirty: dict[Connection, None] = {}   # insertion-ordered set of connections to flush
        self._flush_scheduled = False
        self._ids = itertools.count(1)
        self._heartbeat: PeriodicCallback | None = None
        self._remove_listener: Callable[[], None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._remove_listener = self.broker.add_listener(self._on_event)
        self._heartbeat = PeriodicCallback(self.send_heartbeats, self.heartbeat_seconds * 1000)
        self._heartbeat.start()

    def stop(self) -> None:
        """Stop the heartbeat and the feed and close every connection (1001 going away)."""
        for connection in tuple(self._connections.values()):
            connection.transport.close_connection(GOING_AWAY_CLOSE_CODE, "server shutting down")
            self.disconnect(connection)
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    # --- connections ---------------------------------------------------------------------------

    def connect(self, transport: Transport, event_filter: EventFilter = EventFilter()) -> Connection:
        connection = Connection(self, f"{transport.name[:2]}-{next(self._ids)}", transport, event_filter)
        self._connections[connection.id] = connection
        self.stats.connections_opened += 1
        return connection

    def disconnect(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        connection.discard_queue()
        self._connections.pop(connection.id, None)
        self._dirty.pop(connection, None)
        self.stats.connections_closed += 1

    async def subscribe(self, connection: Connection, event_filter: EventFilter,
                        last_event_id: str | None,
                        confirm: Callable[[bool, int], None]) -> None:
        """Replace the connection's filter; with `last_event_id`, replay what it missed.

        The live feed is held back for this connection before history is read, so nothing published
        during the read is lost; the replay sets the last position sent, so nothing is sent twice.
        `confirm(recovered, replayed)` queues the transport's acknowledgement ahead of the replay.
        """
        connection.filter = event_filter
        if last_event_id is None:
            confirm(True, 0)
            return
        connection.hold_live_events()
        page = await self.broker.history(last_event_id, event_filter, limit=None)
        if connection.closed:
            return
        if page.recovered:
            self.stats.resumes_recovered += 1
        else:
            self.stats.resumes_lost += 1
        confirm(page.recovered, len(page.events))
        await connection.replay(list(page.events))

    def connections(self, transport: str | None = None) -> list[Connection]:
        return [c for c in self._connections.values() if transport is None or c.transport.name == transport]

    # --- fan-out -------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        self.stats.events_received += 1
        for connection in tuple(self._connections.values()):
            if connection.filter.matches(event):
                connection.offer(event)

    def schedule_flush(self, connection: Connection) -> None:
        self._dirty[connection] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            IOLoop.current().add_callback(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for connection in dirty:
            connection.flush()

    def send_heartbeats(self) -> None:
        self.stats.heartbeats += 1
        payload = control_message("heartbeat", timestamp=utc_now_iso())
        frames: dict[str, bytes] = {}
        for connection in tuple(self._connections.values()):
            name = connection.transport.name
            if name not in frames:
                frames[name] = connection.transport.control_frame("heartbeat", payload)
            connection.enqueue(frames[name])

    # --- stats ---------------------------------------------------------------------------------

    def snapshot(self, transport: str) -> dict[str, Any]:
        """A stats endpoint's body for one transport: the guide's four fields first, then ours.
        `total_connections` counts both transports; the rest count `transport`'s connections only."""
        everyone = list(self._connections.values())
        mine = [c for c in everyone if c.transport.name == transport]
        subscriptions = dict.fromkeys(self.registry.names, 0)
        for connection in mine:
            for name in connection.filter.describe_types(self.registry.names):
                subscriptions[name] = subscriptions.get(name, 0) + 1
        return {
            f"{transport}_connections": len(mine),
            "total_connections": len(everyone),
            "subscription_counts": subscriptions,
            "message_queue_size": sum(c.pending_messages for c in mine),
            "message_queue_bytes": sum(c.pending_bytes for c in mine),
            "heartbeat_interval": self.heartbeat_seconds,
            "counters": {name: getattr(self.stats, name) for name in HubStats.__slots__},
        }
