"""Prometheus metrics read from a real hub and broker, checked through the exposition text a scrape gets."""

from __future__ import annotations

from typing import Any

import pytest

from autopm_realtime.brokers.memory import MemoryBroker
from autopm_realtime.events import EventFilter, EventTypeRegistry, validate_publish
from autopm_realtime.hub import Hub
from autopm_realtime.metrics import ServerMetrics, render
from autopm_realtime.ratelimit import ConnectionLimiter, KeyedBuckets, MessageRateGuard, RateLimitStats

from support import SseClient, StalledTransport, WsClient, eventually, file_change, parse_metrics, risk


def scrape(metrics: ServerMetrics) -> dict[tuple[str, frozenset], float]:
    body, content_type = render(metrics.registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse_metrics(body.decode("utf-8"))


def value(values: dict, name: str, **labels: str) -> float:
    return values[name, frozenset(labels.items())]


def commit(event: str, duration_ms: float | None = None, success: bool | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"event": event, "changes_count": 2, "trigger": "manual"}
    if success is not None:
        data["success"] = success
    if duration_ms is not None:
        data["duration_ms"] = duration_ms
    if event == "error":
        data["reason"] = "index.lock is held"
    return {"type": "auto_commit", "project_id": "my-project", "data": data}


class OutageBroker(MemoryBroker):
    """A memory broker whose health reports what a networked broker reports during an outage."""

    kind = "redis"

    def health(self):
        return {"kind": self.kind, "state": "degraded", "reconnects": 3, "errors": 7, "lag_ms": 250,
                "last_error": "ConnectionError: connection refused"}


class BrokenHealthBroker(MemoryBroker):
    def health(self):
        raise RuntimeError("health check exploded")


async def test_events_by_type_broker_and_auto_commit_durations():
    registry = EventTypeRegistry()
    broker = MemoryBroker(history_size=100)
    hub = Hub(broker, registry)
    metrics = ServerMetrics(hub, broker, RateLimitStats())
    hub.start()
    try:
        await broker.publish([validate_publish(raw, registry) for raw in (
            file_change("a.py"), file_change("b.py"), risk("disk full"),
            commit("start"),
            commit("result", duration_ms=42.5, success=True),
            commit("result", duration_ms=3000, success=True),
            commit("error", duration_ms=1500, success=False),
        )])
        values = scrape(metrics)
    finally:
        hub.stop()
        metrics.close()

    assert value(values, "autopm_events_received_total", event_type="file_change") == 2
    assert value(values, "autopm_events_received_total", event_type="risk_alert") == 1
    assert value(values, "autopm_events_received_total", event_type="auto_commit") == 4
    assert value(values, "autopm_events_received_total", event_type="progress_update") == 0

    assert value(values, "autopm_broker_up", kind="memory") == 1
    assert value(values, "autopm_broker_history_events") == 7
    assert ("autopm_broker_lag_seconds", frozenset()) not in values   # the memory broker has no lag

    success = {"outcome": "success"}
    assert value(values, "autopm_auto_commit_duration_seconds_count", **success) == 2
    assert value(values, "autopm_auto_commit_duration_seconds_sum", **success) == pytest.approx(3.0425)
    assert value(values, "autopm_auto_commit_duration_seconds_bucket", le="0.025", **success) == 0
    assert value(values, "autopm_auto_commit_duration_seconds_bucket", le="0.05", **success) == 1
    assert value(values, "autopm_auto_commit_duration_seconds_bucket", le="2.5", **success) == 1
    assert value(values, "autopm_auto_commit_duration_seconds_bucket", le="5.0", **success) == 2
    assert value(values, "autopm_auto_commit_duration_seconds_bucket", le="+Inf", **success) == 2
    assert value(values, "autopm_auto_commit_duration_seconds_count", outcome="failure") == 1
    assert value(values, "autopm_auto_commit_duration_seconds_sum", outcome="failure") == 1.5

    assert value(values, "autopm_connections", transport="websocket") == 0
    assert value(values, "autopm_heartbeat_interval_seconds") == 30
    for kind in ("ws_message", "ws_close", "publish", "connection"):
        assert value(values, "autopm_rate_limit_rejections_total", kind=kind) == 0
    assert any(name.startswith("process_") for name, _ in values)


async def test_close_removes_the_listener_and_leaves_the_registry():
    registry = EventTypeRegistry()
    broker = MemoryBroker()
    hub = Hub(broker, registry)
    metrics = ServerMetrics(hub, broker)
    other = ServerMetrics(hub, broker, process_metrics=False)   # registries are private: no clash
    await broker.publish([validate_publish(file_change(), registry)])
    metrics.close()
    metrics.close()
    await broker.publish([validate_publish(file_change(), registry)])
    assert metrics.events_by_type["file_change"] == 1
    assert other.events_by_type["file_change"] == 2
    assert render(metrics.registry)[0] == b""
    values = scrape(other)
    assert value(values, "autopm_events_received_total", event_type="file_change") == 2
    assert not any(name.startswith("autopm_rate_limit") for name, _ in values)   # no stats given
    other.close()
    assert broker._listeners == []


async def test_a_stalled_connection_shows_in_the_queue_gauges_and_subscriptions():
    registry = EventTypeRegistry()
    broker = MemoryBroker()
    hub = Hub(broker, registry)
    metrics = ServerMetrics(hub, broker, process_metrics=False)
    hub.start()
    try:
        transport = StalledTransport()
        connection = hub.connect(transport, EventFilter(types=frozenset({"file_change", "risk_alert"})))
        hub.connect(StalledTransport())   # every type
        await broker.publish([validate_publish(file_change(f"{i}.py"), registry) for i in range(3)])
        await eventually(lambda: transport.writes)
        values = scrape(metrics)
        assert value(values, "autopm_connections", transport="websocket") == 2
        assert value(values, "autopm_connections", transport="sse") == 0
        assert value(values, "autopm_queue_messages", transport="websocket") == 6
        assert value(values, "autopm_queue_bytes", transport="websocket") == 2 * sum(
            len(e.ws_frame) for e in (await broker.history(None, EventFilter(), None)).events)
        assert value(values, "autopm_subscriptions", transport="websocket", event_type="file_change") == 2
        assert value(values, "autopm_subscriptions", transport="websocket", event_type="risk_alert") == 2
        assert value(values, "autopm_subscriptions", transport="websocket", event_type="auto_commit") == 1
        assert value(values, "autopm_subscriptions", transport="sse", event_type="auto_commit") == 0
        assert value(values, "autopm_messages_sent_total") == 6
        assert value(values, "autopm_socket_writes_total") == 2
        assert value(values, "autopm_connections_opened_total") == 2

        hub.send_heartbeats()
        transport.drain()
        hub.disconnect(connection)
        values = scrape(metrics)
        assert value(values, "autopm_heartbeats_total") == 1
        assert value(values, "autopm_connections", transport="websocket") == 1
        assert value(values, "autopm_connections_closed_total") == 1
    finally:
        hub.stop()
        metrics.close()


async def test_per_type_deliveries_are_read_when_the_hub_counts_them():
    broker = MemoryBroker()
    hub = Hub(broker, EventTypeRegistry())
    metrics = ServerMetrics(hub, broker, process_metrics=False)
    assert not any(name.startswith("autopm_event_deliveries") for name, _ in scrape(metrics))
    hub.deliveries_by_type = {"file_change": 12, "risk_alert": 0}
    values = scrape(metrics)
    assert value(values, "autopm_event_deliveries_total", event_type="file_change") == 12
    metrics.close()


async def test_a_broker_outage_is_reported():
    broker = OutageBroker()
    metrics = ServerMetrics(Hub(broker, EventTypeRegistry()), broker, process_metrics=False)
    values = scrape(metrics)
    assert value(values, "autopm_broker_up", kind="redis") == 0
    assert value(values, "autopm_broker_reconnects_total") == 3
    assert value(values, "autopm_broker_errors_total") == 7
    assert value(values, "autopm_broker_lag_seconds") == 0.25
    metrics.close()


async def test_a_failing_health_check_reads_as_down_and_the_scrape_still_works(caplog):
    broker = BrokenHealthBroker()
    metrics = ServerMetrics(Hub(broker, EventTypeRegistry()), broker, process_metrics=False)
    values = scrape(metrics)
    assert value(values, "autopm_broker_up", kind="memory") == 0
    assert value(values, "autopm_connections", transport="sse") == 0
    assert "health check exploded" in caplog.text
    metrics.close()


async def test_rate_limit_refusals_are_counted_by_kind():
    stats = RateLimitStats()
    broker = MemoryBroker()
    metrics = ServerMetrics(Hub(broker, EventTypeRegistry()), broker, stats, process_metrics=False)
    guard = MessageRateGuard(rate=1, burst=1, max_violations=1, clock=lambda: 0.0, stats=stats)
    [guard.check() for _ in range(3)]                     # allow, reject, close
    publishes = KeyedBuckets(rate=1, burst=1, max_keys=1, clock=lambda: 0.0, stats=stats)
    publishes.take("a"), publishes.take("a"), publishes.take("b")
    limiter = ConnectionLimiter(max_total=1, max_per_address=1, stats=stats)
    limiter.acquire("x"), limiter.acquire("x"), limiter.acquire("y")
    values = scrape(metrics)
    assert value(values, "autopm_rate_limit_rejections_total", kind="ws_message") == 2
    assert value(values, "autopm_rate_limit_rejections_total", kind="ws_close") == 1
    assert value(values, "autopm_rate_limit_rejections_total", kind="publish") == 1
    assert value(values, "autopm_rate_limit_rejections_total", kind="connection") == 2
    assert value(values, "autopm_rate_limit_keys_evicted_total") == 1
    metrics.close()


async def test_openmetrics_when_the_scraper_asks_for_it():
    broker = MemoryBroker()
    metrics = ServerMetrics(Hub(broker, EventTypeRegistry()), broker, process_metrics=False)
    body, content_type = render(metrics.registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"autopm_events_received_total{event_type=\"file_change\"} 0" in body
    assert render(metrics.registry, "text/plain")[1].startswith("text/plain")
    metrics.close()


@pytest.mark.parametrize("buckets", [(1, 0.5), (0.1, 0.1), (-1, 1), (1, float("inf"))])
def test_commit_buckets_are_validated(buckets):
    broker = MemoryBroker()
    with pytest.raises(ValueError):
        ServerMetrics(Hub(broker, EventTypeRegistry()), broker, commit_buckets=buckets)
    assert broker._listeners == []


async def test_live_connections_of_both_transports(port, service):
    """Through the server: real WebSocket and SSE clients, a resume that cannot be served."""
    metrics = ServerMetrics(service.hub, service.broker, process_metrics=False)
    try:
        ws, _ = await WsClient.connected(port)
        await ws.subscribe(event_types=["file_change", "risk_alert"])
        sse, _ = await SseClient.connected(port, "?event_types=risk_alert")
        other, _ = await WsClient.connected(port)
        confirmed = await other.subscribe(last_event_id="not-an-id")
        assert confirmed["recovered"] is False
        await eventually(lambda: len(service.hub.connections()) == 3)
        await service.broker.publish([validate_publish(risk("disk full"), service.registry)])
        await ws.events(1)
        await sse.events(1)
        values = scrape(metrics)
    finally:
        metrics.close()
    assert value(values, "autopm_connections", transport="websocket") == 2
    assert value(values, "autopm_connections", transport="sse") == 1
    assert value(values, "autopm_subscriptions", transport="websocket", event_type="file_change") == 2
    assert value(values, "autopm_subscriptions", transport="websocket", event_type="risk_alert") == 2
    assert value(values, "autopm_subscriptions", transport="websocket", event_type="progress_update") == 1
    assert value(values, "autopm_subscriptions", transport="sse", event_type="risk_alert") == 1
    assert value(values, "autopm_subscriptions", transport="sse", event_type="file_change") == 0
    assert value(values, "autopm_resumes_total", outcome="lost") == 1
    assert value(values, "autopm_resumes_total", outcome="recovered") == 0
    assert value(values, "autopm_events_received_total", event_type="risk_alert") == 1
    assert value(values, "autopm_messages_sent_total") >= 2 + 3   # two events, greetings, confirmations
    assert value(values, "autopm_sent_bytes_total") > 0
    assert value(values, "autopm_slow_consumer_closes_total") == 0
