"""The hub fans events out: who wants what, one pump that delivers in bounded slices, heartbeat, stats.

Every event is encoded once per transport (the bytes live on the `Event`) and the same bytes are queued
for every matching connection, found through a `SubscriptionIndex`. Delivery runs in a pump that works for
at most one slice of time per loop turn (offering events, then writing each dirty connection's queue in
one piece) and then yields, so heartbeats, handshakes and publishes are served during a burst, and events
that arrive while a round of writes is under way join the next write to each connection.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from tornado.ioloop import IOLoop, PeriodicCallback

from .brokers import Broker, BrokerUnavailableError, HistoryPage
from .connection import Connection, QueueLimits, Transport
from .events import Event, EventFilter, EventTypeRegistry, control_message, utc_now_iso
from .subscriptions import SubscriptionIndex

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_SLICE_MS = 0.2
DEFAULT_BACKLOG_EVENTS = 10_000
GOING_AWAY_CLOSE_CODE = 1001
CLOCK_CHECK_EVERY = 64   # offers between looks at the clock; an offer costs about a microsecond


@dataclass(frozen=True, slots=True)
class PumpLimits:
    """How long one loop turn may spend delivering, how many events may wait for delivery, and how
    often a round of writes may start (0: as soon as there is something to write)."""

    slice_seconds: float = DEFAULT_SLICE_MS / 1000
    backlog_events: int = DEFAULT_BACKLOG_EVENTS
    write_interval: float = 0.0   # seconds between the starts of two rounds of writes


@dataclass(slots=True)
class HubStats:
    """Monotonic counters since start, for the stats endpoints and `/metrics`."""

    connections_opened: int = 0
    connections_closed: int = 0
    events_received: int = 0
    messages_sent: int = 0
    writes: int = 0              # messages_sent / writes is how well queued messages were coalesced
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
                 limits: QueueLimits = QueueLimits(), pump: PumpLimits = PumpLimits()) -> None:
        if heartbeat_seconds <= 0:
            raise ValueError("heartbeat interval must be positive")
        self.broker = broker
        self.registry = registry
        self.heartbeat_seconds = heartbeat_seconds
        self.limits = limits
        self.pump_limits = pump
        self.stats = HubStats()
        self.deliveries_by_type: dict[str, int] = {}   # events offered to connections, per event type
        self._connections: dict[str, Connection] = {}
        self._index: SubscriptionIndex[Connection] = SubscriptionIndex()
        self._backlog: collections.deque[Event] = collections.deque()   # received, not yet offered
        self._offering: tuple[Event, list[Connection], int] | None = None   # an event offered in part
        self._dirty: collections.deque[Connection] = collections.deque()   # connections to flush
        self._pump_scheduled = False
        self._writes_overdue = False   # the last slice ran out while offering, before any write
        self._round_left = 0           # connections still to write in the current round
        self._next_round_at = 0.0      # perf_counter time before which no new round of writes starts
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
        self._backlog.clear()
        self._offering = None

    # --- connections ---------------------------------------------------------------------------

    def connect(self, transport: Transport, event_filter: EventFilter = EventFilter()) -> Connection:
        connection = Connection(self, f"{transport.name[:2]}-{next(self._ids)}", transport, event_filter)
        self._connections[connection.id] = connection
        self._index.add(connection, event_filter)
        self.stats.connections_opened += 1
        return connection

    def disconnect(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        connection.discard_queue()
        self._connections.pop(connection.id, None)
        self._index.remove(connection, connection.filter)
        self.stats.connections_closed += 1

    def set_filter(self, connection: Connection, event_filter: EventFilter) -> None:
        """Change what a connection receives from the next event offered on."""
        if not connection.closed:
            self._index.remove(connection, connection.filter)
            self._index.add(connection, event_filter)
        connection.filter = event_filter

    async def subscribe(self, connection: Connection, event_filter: EventFilter,
                        last_event_id: str | None,
                        confirm: Callable[[bool, int], None]) -> None:
        """Replace the connection's filter; with `last_event_id`, replay what it missed.

        The live feed is held back for this connection before history is read, so nothing published
        during the read is lost; the replay sets the last position sent, so nothing is sent twice.
        `confirm(recovered, replayed)` queues the transport's acknowledgement ahead of the replay.
        """
        self.set_filter(connection, event_filter)
        if last_event_id is None:
            confirm(True, 0)
            return
        connection.hold_live_events()
        try:
            page = await self.broker.history(last_event_id, event_filter, limit=None)
        except BrokerUnavailableError as error:
            # The resume cannot be served now; say so, as for an unknown id, and go on live.
            log.warning("resume of %s after %s not served: %s", connection.id, last_event_id, error)
            page = HistoryPage((), recovered=False)
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
        if len(self._backlog) >= self.pump_limits.backlog_events:
            self._offer_backlog(deadline=None)   # over the bound: catch up now rather than grow
        self._backlog.append(event)
        self._schedule_pump()

    def schedule_flush(self, connection: Connection) -> None:
        connection.flush_pending = True
        self._dirty.append(connection)
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            IOLoop.current().add_callback(self._pump)

    def _pump(self) -> None:
        """One slice of delivery: offer waiting events, then write queued bytes, until the slice is used
        up; then yield to the loop and come back for the rest.

        Writes wait until every waiting event is offered, so that a batch goes out in one write per
        connection. When offering alone used up the last slice (events arrive faster than they can be
        offered), this slice writes first, for half of it: under overload deliveries keep flowing
        instead of waiting for the queues to fill."""
        self._pump_scheduled = False
        started = time.perf_counter()
        deadline = started + self.pump_limits.slice_seconds
        if self._writes_overdue:
            self._flush_dirty(started + self.pump_limits.slice_seconds / 2)
        offered_all = self._offer_backlog(deadline)
        if offered_all:
            self._flush_dirty(deadline)
        self._writes_overdue = not offered_all
        if self._backlog or self._offering is not None or self._dirty:
            wait = self._next_round_at - time.perf_counter()
            if self._round_left == 0 and not self._backlog and self._offering is None and wait > 0:
                self._pump_scheduled = True   # the next round of writes is not due yet
                IOLoop.current().call_later(wait, self._pump)
            else:
                self._schedule_pump()

    def _offer_backlog(self, deadline: float | None) -> bool:
        """Offer waiting events to the connections that match; False if the deadline came first."""
        clock = time.perf_counter
        while self._offering is not None or self._backlog:
            if self._offering is None:
                event = self._backlog.popleft()
                targets = self._index.matching(event)
                self.deliveries_by_type[event.type] = self.deliveries_by_type.get(event.type, 0) + len(targets)
                self._offering = (event, targets, 0)
            event, targets, start = self._offering
            stop = len(targets)
            for position in range(start, stop):
                targets[position].offer(event)
                if deadline is not None and position % CLOCK_CHECK_EVERY == 0 and clock() > deadline:
                    self._offering = (event, targets, position + 1) if position + 1 < stop else None
                    return False
            self._offering = None
        return True

    def _flush_dirty(self, deadline: float) -> None:
        """Write each dirty connection's queue in one piece, oldest first, until the deadline.

        Writes go in rounds over the connections dirty when the round starts; a round starts at most
        every `write_interval` seconds, so that with an interval events published meanwhile share a write."""
        dirty = self._dirty
        clock = time.perf_counter
        if self._round_left == 0:
            now = clock()
            if now < self._next_round_at:
                return
            self._round_left = len(dirty)
            self._next_round_at = now + self.pump_limits.write_interval
        while dirty and self._round_left > 0:
            self._round_left -= 1
            connection = dirty.popleft()
            connection.flush_pending = False
            connection.flush()
            if clock() > deadline:
                return
        if not dirty:
            self._round_left = 0

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
