"""`GET /metrics` as Prometheus scrapes it, after real traffic over real sockets. (The collector read from
a hub directly is in test_metrics_unit.py.)"""

from __future__ import annotations

import json

import pytest

from prometheus_client.parser import text_string_to_metric_families

from autopm_realtime.tokens import mint_token
from support import (SseClient, WsClient, eventually, file_change, parse_metrics, progress, publish, risk,
                     with_settings)

SECRET = "metrics-test-secret-" + "x" * 32


async def scrape(http, port: int, headers: dict[str, str] | None = None) \
        -> dict[tuple[str, frozenset], float]:
    response = await http.fetch(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.body.decode("utf-8"))


def value(values: dict, name: str, **labels: str) -> float:
    return values[name, frozenset(labels.items())]


async def test_metrics_follow_connections_subscriptions_and_events(port, http, service):
    before = await scrape(http, port)
    assert value(before, "autopm_connections", transport="websocket") == 0
    assert value(before, "autopm_events_received_total", event_type="file_change") == 0

    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change", "risk_alert"])
    everything, _ = await WsClient.connected(port)
    await everything.subscribe()
    idle, _ = await WsClient.connected(port)   # not subscribed: counted as a connection only
    sse, _ = await SseClient.connected(port, "?event_types=risk_alert")
    await eventually(lambda: len(service.hub.connections()) == 4)
    connected = await scrape(http, port)

    await publish(http, port, [file_change("a.py"), file_change("b.py"), risk("disk full"),
                               progress(50, 1, 2)])
    assert len(await ws.events(3)) == 3
    assert len(await everything.events(4)) == 4
    assert len(await sse.events(1)) == 1
    after = await scrape(http, port)

    for values in (connected, after):
        assert value(values, "autopm_connections", transport="websocket") == 3
        assert value(values, "autopm_connections", transport="sse") == 1
        assert value(values, "autopm_subscriptions", transport="websocket", event_type="file_change") == 2
        assert value(values, "autopm_subscriptions", transport="websocket", event_type="risk_alert") == 2
        assert value(values, "autopm_subscriptions", transport="websocket",
                     event_type="progress_update") == 1
        assert value(values, "autopm_subscriptions", transport="sse", event_type="risk_alert") == 1
        assert value(values, "autopm_subscriptions", transport="sse", event_type="file_change") == 0
    assert value(after, "autopm_events_received_total", event_type="file_change") == 2
    assert value(after, "autopm_events_received_total", event_type="risk_alert") == 1
    assert value(after, "autopm_events_received_total", event_type="progress_update") == 1
    assert value(after, "autopm_events_received_total", event_type="auto_commit") == 0
    # Eight events written (3 + 4 + 1); the /metrics answer itself is not a message.
    sent = value(after, "autopm_messages_sent_total") - value(connected, "autopm_messages_sent_total")
    assert sent >= 8
    assert value(after, "autopm_sent_bytes_total") > value(connected, "autopm_sent_bytes_total")
    assert value(after, "autopm_connections_opened_total") == 4

    idle.close()
    sse.close()
    await eventually(lambda: len(service.hub.connections()) == 2)
    closed = await scrape(http, port)
    assert value(closed, "autopm_connections", transport="websocket") == 2
    assert value(closed, "autopm_connections", transport="sse") == 0
    assert value(closed, "autopm_subscriptions", transport="sse", event_type="risk_alert") == 0
    assert value(closed, "autopm_connections_closed_total") == 2


async def test_resumes_are_counted_by_outcome(port, http):
    known = json.loads((await publish(http, port, file_change())).body)["id"]
    await publish(http, port, file_change("later.py"))
    ws, _ = await WsClient.connected(port)
    recovered = await ws.subscribe(last_event_id=known)
    assert (recovered["recovered"], recovered["replayed"]) == (True, 1)
    [replayed] = await ws.events(1)
    assert replayed["data"]["file_path"] == "later.py"
    lost = await ws.subscribe(last_event_id="no-such-id")
    assert lost["recovered"] is False
    values = await scrape(http, port)
    assert value(values, "autopm_resumes_total", outcome="recovered") == 1
    assert value(values, "autopm_resumes_total", outcome="lost") == 1
    assert value(values, "autopm_replayed_events_total") == 1


@with_settings(publish_rate=1, publish_burst=1, max_connections=1, ws_message_rate=1, ws_message_burst=1,
               ws_rate_violations=1)
async def test_rate_limit_rejections_are_counted_by_kind(port, http):
    before = await scrape(http, port)
    assert all(value(before, "autopm_rate_limit_rejections_total", kind=kind) == 0
               for kind in ("publish", "connection", "ws_message", "ws_close"))

    assert (await publish(http, port, file_change())).code == 202
    assert (await publish(http, port, file_change())).code == 429
    ws, _ = await WsClient.connected(port)
    refused = await WsClient.open(port)
    assert (await refused.closed())[0] == 1013
    for number in range(3):   # allowed, rejected, closing
        await ws.send({"type": "ping", "id": number})
    assert await ws.closed() == (1008, "rate limit exceeded")

    values = await scrape(http, port)
    assert value(values, "autopm_rate_limit_rejections_total", kind="publish") == 1
    assert value(values, "autopm_rate_limit_rejections_total", kind="connection") == 1
    assert value(values, "autopm_rate_limit_rejections_total", kind="ws_message") == 2
    assert value(values, "autopm_rate_limit_rejections_total", kind="ws_close") == 1


@pytest.mark.parametrize("accept", ["text/plain;version=0.0.4", "*/*"])
async def test_the_text_format_for_classic_scrapers(port, http, accept):
    """What Prometheus 2 asks for when it does not want OpenMetrics, and what curl sends."""
    response = await http.fetch(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {family.name for family in text_string_to_metric_families(response.body.decode())}
    assert {"autopm_connections", "autopm_events_received", "autopm_rate_limit_rejections"} <= names


async def test_openmetrics_when_asked(port, http):
    response = await http.fetch(f"http://127.0.0.1:{port}/metrics",
                                headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.body.rstrip().endswith(b"# EOF")


@with_settings(jwt_secret=SECRET)
async def test_metrics_need_a_token_when_jwt_is_on(port, http):
    response = await http.fetch(f"http://127.0.0.1:{port}/metrics", raise_error=False)
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert json.loads(response.body)["error"]["reason"].startswith("a token is required")
    token = mint_token(secret=SECRET, ttl_seconds=60, projects=[])
    values = await scrape(http, port, {"Authorization": f"Bearer {token}"})
    assert value(values, "autopm_connections", transport="websocket") == 0
