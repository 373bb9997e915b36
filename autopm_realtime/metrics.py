"""Prometheus metrics, read at scrape time so that fan-out pays nothing for them.

`ServerMetrics` is a collector in a registry of its own (never the global `REGISTRY`: a process may build
many services, tests do). On each scrape it reads the hub's counters and connections, the broker's
`health()` and the rate limiters' `RateLimitStats`. Only two things are counted as they happen, by a
broker listener that costs a dict increment per event: events by type and the durations reported by
`auto_commit` `result`/`error` events.

Scrapes read hub state without locks: call `render` on the IOLoop (a Tornado handler does), never from
`prometheus_client.start_http_server`'s thread.

Metrics (all prefixed `autopm_`):

| name | type | labels |
| --- | --- | --- |
| `connections` | gauge | `transport` |
| `connections_opened_total`, `connections_closed_total` | counter | |
| `subscriptions` | gauge | `transport`, `event_type` |
| `events_received_total` | counter | `event_type` |
| `event_deliveries_total` | counter | `event_type` (when the hub counts `deliveries_by_type`) |
| `messages_sent_total`, `sent_bytes_total`, `socket_writes_total` | counter | |
| `queue_messages`, `queue_bytes` | gauge | `transport` |
| `slow_consumer_closes_total` | counter | |
| `resumes_total` | counter | `outcome` = `recovered` / `lost` |
| `replayed_events_total`, `heartbeats_total` | counter | |
| `heartbeat_interval_seconds` | gauge | |
| `broker_up` | gauge | `kind` |
| `broker_reconnects_total`, `broker_errors_total` | counter | (when health reports them) |
| `broker_lag_seconds` | gauge | (when health reports `lag_ms`) |
| `broker_history_events` | gauge | (when health reports `history_size`) |
| `auto_commit_duration_seconds` | histogram | `outcome` = `success` / `failure` |
| `rate_limit_rejections_total` | counter | `kind` = `ws_message` / `ws_close` / `publish` / `connection` |
| `rate_limit_keys_evicted_total` | counter | |

With `process_metrics` the registry also holds prometheus-client's `process_*` collector (memory, CPU,
open file descriptors: what 10,000 connections use up first).
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .brokers import Broker
from .events import Event
from .hub import Hub
from .ratelimit import RateLimitStats

log = logging.getLogger(__name__)

PREFIX = "autopm_"
TRANSPORTS = ("websocket", "sse")
# Auto-commit durations: a shadow commit of a small change takes tens of milliseconds, a large tree or a
# slow disk seconds.
DEFAULT_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COMMIT_OUTCOMES = ("success", "failure")


class _Histogram:
    """Bucket counts kept by the event listener (one bisect over a dozen bounds per observation) and
    turned into cumulative buckets at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)   # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1   # `le`: a value on a bound is in it
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return buckets


class ServerMetrics(Collector):
    """The server's metrics in `self.registry`. Build it before events flow (with the service) and
    `close()` it when the service stops; events published before it was built are not counted by type."""

    def __init__(self, hub: Hub, broker: Broker, rate_stats: RateLimitStats | None = None, *,
                 registry: CollectorRegistry | None = None, process_metrics: bool = True,
                 commit_buckets: Sequence[float] = DEFAULT_COMMIT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in commit_buckets)
        if list(bounds) != sorted(set(bounds)) or not all(0 <= b < math.inf for b in bounds):
            raise ValueError("commit buckets must be increasing, finite and >= 0")
        self.hub = hub
        self.broker = broker
        self.rate_stats = rate_stats
        self.registry = registry if registry is not None else CollectorRegistry()
        self.events_by_type: dict[str, int] = dict.fromkeys(hub.registry.names, 0)
        self.commit_durations = {outcome: _Histogram(bounds) for outcome in COMMIT_OUTCOMES}
        self._remove_listener: Callable[[], None] | None = broker.add_listener(self._on_event)
        self.registry.register(self)
        self._process: ProcessCollector | None = None
        if process_metrics:
            self._process = ProcessCollector(registry=self.registry)

    def close(self) -> None:
        """Stop counting events and leave the registry; safe to call twice."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
            self.registry.unregister(self)
            if self._process is not None:
                self.registry.unregister(self._process)

    # --- counted as events arrive ------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        counts = self.events_by_type
        counts[event.type] = counts.get(event.type, 0) + 1
        if event.type == "auto_commit":
            data = event.data
            duration = data.get("duration_ms")
            if (data.get("event") in ("result", "error") and isinstance(duration, (int, float))
                    and not isinstance(duration, bool) and 0 <= duration < math.inf):
                outcome = "success" if data.get("success") is True else "failure"
                self.commit_durations[outcome].observe(duration / 1000)

    # --- read at scrape time -----------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return ()   # names are not checked for clashes: the registry is ours alone

    def collect(self) -> Iterator[Metric]:
        yield from self._hub_metrics()
        yield from self._broker_metrics()
        yield from self._commit_metrics()
        if self.rate_stats is not None:
            yield from self._rate_limit_metrics(self.rate_stats)

    def _hub_metrics(self) -> Iterator[Metric]:
        hub, stats = self.hub, self.hub.stats
        names = hub.registry.names
        connections = dict.fromkeys(TRANSPORTS, 0)
        queue_messages = dict.fromkeys(TRANSPORTS, 0)
        queue_bytes = dict.fromkeys(TRANSPORTS, 0)
        filters: dict[tuple[str, frozenset[str] | None], int] = {}   # few distinct filters, many users
        for connection in hub.connections():
            transport = connection.transport.name
            connections[transport] = connections.get(transport, 0) + 1
            queue_messages[transport] = queue_messages.get(transport, 0) + connection.pending_messages
            queue_bytes[transport] = queue_bytes.get(transport, 0) + connection.pending_bytes
            key = (transport, connection.filter.types)
            filters[key] = filters.get(key, 0) + 1
        subscriptions = {(transport, name): 0 for transport in connections for name in names}
        for (transport, types), count in filters.items():
            for name in names:
                if types is None or name in types:
                    subscriptions[transport, name] += count

        yield _gauge_by("connections", "Open connections.", "transport", connections)
        yield _counter("connections_opened", "Connections opened.", stats.connections_opened)
        yield _counter("connections_closed", "Connections closed.", stats.connections_closed)
        family = GaugeMetricFamily(PREFIX + "subscriptions",
                                   "Open connections whose filter admits the event type.",
                                   labels=("transport", "event_type"))
        for (transport, name), count in subscriptions.items():
            family.add_metric((transport, name), count)
        yield family
        yield _counter_by("events_received", "Events received from the broker.", "event_type",
                          self.events_by_type)
        deliveries = getattr(hub, "deliveries_by_type", None)
        if deliveries is not None:
            yield _counter_by("event_deliveries", "Live events offered to connections (one per "
                              "connection an event matched).", "event_type", deliveries)
        yield _counter("messages_sent", "Messages written to connections: events, replays and control "
                       "messages.", stats.messages_sent)
        yield _counter("sent_bytes", "Bytes written to connections.", stats.bytes_sent)
        yield _counter("socket_writes", "Writes to connections (messages_sent / socket_writes is how well "
                       "messages were coalesced).", stats.writes)
        yield _gauge_by("queue_messages", "Messages queued or in flight that clients have not taken.",
                        "transport", queue_messages)
        yield _gauge_by("queue_bytes", "Bytes queued or in flight that clients have not taken.",
                        "transport", queue_bytes)
        yield _counter("slow_consumer_closes", "Connections closed for falling behind.",
                       stats.slow_consumer_closes)
        yield _counter_by("resumes", "Subscriptions with last_event_id, by whether history covered the "
                          "gap.", "outcome", {"recovered": stats.resumes_recovered, "lost": stats.resumes_lost})
        yield _counter("replayed_events", "Events replayed to resuming connections.", stats.replayed_events)
        yield _counter("heartbeats", "Heartbeat rounds sent (one per interval, to every connection).",
                       stats.heartbeats)
        yield GaugeMetricFamily(PREFIX + "heartbeat_interval_seconds", "Seconds between heartbeats.",
                                value=hub.heartbeat_seconds)

    def _broker_metrics(self) -> Iterator[Metric]:
        kind = getattr(self.broker, "kind", "unknown")
        try:
            health = self.broker.health()
        except Exception:
            log.exception("broker health failed during a metrics scrape")
            health = {"state": "error"}
        up = GaugeMetricFamily(PREFIX + "broker_up", "1 when the broker reports state ok, else 0.",
                               labels=("kind",))
        up.add_metric((str(health.get("kind", kind)),), 1 if health.get("state") == "ok" else 0)
        yield up
        if _number(health.get("reconnects")):
            yield _counter("broker_reconnects", "Reconnections to the broker.", health["reconnects"])
        if _number(health.get("errors")):
            yield _counter("broker_errors", "Broker errors.", health["errors"])
        if _number(health.get("lag_ms")):
            yield GaugeMetricFamily(PREFIX + "broker_lag_seconds", "How far the live feed is behind the "
                                    "broker.", value=health["lag_ms"] / 1000)
        if _number(health.get("history_size")):
            yield GaugeMetricFamily(PREFIX + "broker_history_events", "Events the broker retains for "
                                    "resumes.", value=health["history_size"])

    def _commit_metrics(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(PREFIX + "auto_commit_duration_seconds",
                                       "Auto-commit attempts by how long they took, from auto_commit "
                                       "result and error events.", labels=("outcome",))
        for outcome, histogram in self.commit_durations.items():
            family.add_metric((outcome,), histogram.cumulative(), histogram.sum)
        yield family

    @staticmethod
    def _rate_limit_metrics(stats: RateLimitStats) -> Iterator[Metric]:
        yield _counter_by("rate_limit_rejections", "Refusals by the rate and connection limits: ws_message "
                          "(inbound messages not acted on), ws_close (connections closed 1008), publish, "
                          "connection.", "kind", stats.by_kind())
        yield _counter("rate_limit_keys_evicted", "Publish rate-limit keys forgotten to stay within the "
                       "bound (each comes back with a full bucket).", stats.publish_keys_evicted)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _counter_by(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=(label,))
    for key, value in values.items():
        family.add_metric((key,), value)
    return family


def _gauge_by(name: str, documentation: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=(label,))
    for key, value in values.items():
        family.add_metric((key,), value)
    return family


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition body and its Content-Type: the classic text format 0.0.4, which every scraper
    reads, whatever the installed prometheus-client's latest is; OpenMetrics when `accept` (the request's
    Accept header) asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
