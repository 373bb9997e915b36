"""One subscriber as the hub sees it: a filter, a bounded outgoing queue, and the transport it writes to.

Transports (the WebSocket and SSE handlers) hand the hub a `Transport`; the hub hands back a `Connection`
and from then on writes to it. Frames are queued as pre-built bytes and written in one piece per loop
turn. The queue bound counts everything the client has not yet taken: what is queued here plus what was
written to the stream but not yet taken by the kernel.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .events import Event, EventFilter, control_message

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger(__name__)

DEFAULT_QUEUE_MAX_MESSAGES = 1_000
DEFAULT_QUEUE_MAX_BYTES = 4 * 1024 * 1024
SLOW_CONSUMER_CLOSE_CODE = 4008


class Transport(Protocol):
    """What the hub needs from a wire protocol handler."""

    name: str   # "websocket" or "sse"

    def event_frame(self, event: Event) -> bytes:
        """The event's bytes for this protocol (one of the `Event`'s cached frames)."""

    def control_frame(self, kind: str, payload: bytes) -> bytes:
        """A control message (`payload` is its JSON) framed for this protocol."""

    def send(self, data: bytes) -> asyncio.Future[Any] | None:
        """Write already framed bytes to the connection. Returns None when the kernel took them all at
        once (a client that keeps up), a future that is done when it has taken the rest, or None when the
        stream is closed (the transport's close reports that)."""

    def close_connection(self, code: int, reason: str) -> None:
        """End the connection: a WebSocket closes with `code`; an SSE stream just ends."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Per connection: queued plus in-flight messages and bytes beyond which it is a slow consumer."""

    max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES
    max_bytes: int = DEFAULT_QUEUE_MAX_BYTES


class Connection:
    """One subscriber's filter and outgoing queue. Small on purpose: there may be tens of thousands."""

    __slots__ = ("id", "transport", "filter", "closed", "flush_pending", "_hub", "_queue", "_queued_bytes",
                 "_inflight", "_inflight_bytes", "_inflight_messages", "_held", "_last_position")

    def __init__(self, hub: Hub, connection_id: str, transport: Transport, event_filter: EventFilter):
        self.id = connection_id
        self.transport = transport
        self.filter = event_filter        # changed only through `Hub.set_filter`, which keeps the index
        self.closed = False
        self.flush_pending = False        # in the hub's list of connections to flush
        self._hub = hub
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        # Writes the kernel has not fully taken yet: (future, bytes, messages). Created on the first
        # such write: most connections never have one, and an empty deque is 600 bytes.
        self._inflight: collections.deque[tuple[asyncio.Future[Any], int, int]] | None = None
        self._inflight_bytes = 0
        self._inflight_messages = 0
        self._held: list[Event] | None = None   # live events kept back while a resume replays history
        self._last_position: Any = None          # of the last event sent, to drop replay duplicates

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
        """A message to this connection alone (a reply, a greeting) goes out now, behind whatever is
        queued: there is nothing to coalesce it with, and a reply should not wait for a burst's pump."""
        self.enqueue(self.transport.control_frame(kind, control_message(kind, **fields)))
        self.flush()

    def offer(self, event: Event) -> None:
        """A live event that matches this connection's filter (the index checked type and project; a
        token's scope is checked here)."""
        scope = self.filter.scope
        if scope is not None and event.project_id not in scope:
            return
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
        if not self.flush_pending:
            self._hub.schedule_flush(self)

    def _would_overflow(self, size: int) -> bool:
        limits = self._hub.limits
        if (len(self._queue) + self._inflight_messages < limits.max_messages
                and self._queued_bytes + self._inflight_bytes + size <= limits.max_bytes):
            return False   # within bounds even counting every write as still in flight
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
        """Write everything queued in one piece."""
        if self.closed or not self._queue:
            return
        data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
        count = len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self._write(data, count)

    def _write(self, data: bytes, count: int) -> asyncio.Future[Any] | None:
        stats = self._hub.stats
        stats.writes += 1
        stats.messages_sent += count
        stats.bytes_sent += len(data)
        future = self.transport.send(data)
        if future is not None:
            if self._inflight is None:
                self._inflight = collections.deque()
            self._inflight_bytes += len(data)
            self._inflight_messages += count
            self._inflight.append((future, len(data), count))
        return future

    def _settle(self) -> None:
        """Forget writes the kernel has taken. Stream writes complete in order, so only the oldest
        can be done."""
        inflight = self._inflight
        while inflight and inflight[0][0].done():
            future, size, count = inflight.popleft()
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
