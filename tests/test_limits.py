"""Rate and connection limits through the real server: inbound WebSocket messages, publishes, and open
connections (in total and per client address). The limiters' arithmetic is in test_ratelimit.py."""

from __future__ import annotations

import asyncio
import json

from tornado.tcpclient import TCPClient

from autopm_realtime.tokens import mint_token
from support import SseClient, WsClient, eventually, file_change, publish, with_settings

SECRET = "limits-test-secret-" + "x" * 32
WS_PATH = "/api/v1/dashboard/ws"


def reason(response) -> str:
    return json.loads(response.body)["error"]["reason"]


def bearer(subject: str) -> dict[str, str]:
    value = mint_token(secret=SECRET, ttl_seconds=600, subject=subject, publish=True)
    return {"Authorization": f"Bearer {value}"}


# --- inbound WebSocket messages ------------------------------------------------------------------

# A rate of 1/s: the burst of 5 does not refill while the test's messages are in flight.
@with_settings(ws_message_rate=1, ws_message_burst=5, ws_rate_violations=3)
async def test_a_client_that_ignores_rate_limited_errors_is_closed_1008(port, service):
    ws, _ = await WsClient.connected(port)
    for number in range(9):   # all at once: a burst of 5, 3 rejected, and the one that closes
        await ws.send({"type": "ping", "id": number})
    for number in range(5):
        assert (await ws.receive_type("pong"))["id"] == number
    for _ in range(3):
        error = await ws.receive_type("error")
        assert error["code"] == "rate_limited" and error["message"]
        assert 0 < error["retry_after"] <= 1.0
    assert await ws.closed() == (1008, "rate limit exceeded")
    stats = service.rate_stats
    assert (stats.ws_messages_rejected, stats.ws_closed_for_rate) == (4, 1)


@with_settings(ws_message_rate=4, ws_message_burst=1, ws_rate_violations=3)
async def test_a_client_that_waits_retry_after_is_served_again(port):
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "ping", "id": 1})
    await ws.send({"type": "ping", "id": 2})
    assert (await ws.receive_type("pong"))["id"] == 1
    error = await ws.receive_type("error")
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 0.25
    await asyncio.sleep(error["retry_after"])   # what the error tells a client to do
    await ws.send({"type": "ping", "id": 3})
    assert (await ws.receive_type("pong"))["id"] == 3


# --- publishes -----------------------------------------------------------------------------------

@with_settings(publish_rate=1, publish_burst=2)
async def test_publishes_beyond_the_burst_are_429_with_retry_after(port, http, service):
    for path in ("a.py", "b.py"):
        assert (await publish(http, port, file_change(path))).code == 202
    refused = await publish(http, port, file_change("c.py"))
    assert refused.code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    error = json.loads(refused.body)["error"]
    assert error["status"] == 429 and error["reason"].startswith("too many publish requests")
    history = await http.fetch(f"http://127.0.0.1:{port}/api/v1/events")
    assert [e["data"]["file_path"] for e in json.loads(history.body)["events"]] == ["a.py", "b.py"]
    assert service.rate_stats.publishes_rejected == 1


@with_settings(publish_rate=1, publish_burst=2, jwt_secret=SECRET)
async def test_publish_limits_are_per_token_subject(port, http):
    alice, bob = bearer("alice"), bearer("bob")
    assert [(await publish(http, port, file_change(), headers=alice)).code for _ in range(3)] == [
        202, 202, 429]
    assert [(await publish(http, port, file_change(), headers=bob)).code for _ in range(3)] == [
        202, 202, 429]
    # A second token for the same subject shares its bucket.
    assert (await publish(http, port, file_change(), headers=bearer("alice"))).code == 429


@with_settings(publish_rate=1, publish_burst=1)
async def test_an_array_publish_takes_one_token(port, http):
    accepted = await publish(http, port, [file_change("a.py"), file_change("b.py"), file_change("c.py")])
    assert accepted.code == 202 and len(json.loads(accepted.body)["ids"]) == 3
    assert (await publish(http, port, file_change())).code == 429


# --- connections ---------------------------------------------------------------------------------

async def sse_refusal(http, port: int):
    return await http.fetch(f"http://127.0.0.1:{port}/api/v1/sse/events", raise_error=False)


async def refused_ws(port: int) -> tuple[int | None, str | None]:
    ws = await WsClient.open(port)
    return await ws.closed()


@with_settings(max_connections=3)
async def test_connections_beyond_the_limit_are_refused_until_one_closes(port, http, service):
    first, _ = await WsClient.connected(port)
    second, _ = await WsClient.connected(port)
    sse, _ = await SseClient.connected(port)   # the third, of either transport, is admitted

    assert await refused_ws(port) == (1013, "too many connections")
    response = await sse_refusal(http, port)
    assert response.code == 503 and reason(response) == "too many connections"
    assert response.headers["Retry-After"] == "5"
    assert service.connection_limiter.total == 3 and service.rate_stats.connections_refused == 2

    first.close()
    await eventually(lambda: service.connection_limiter.total == 2)
    again, _ = await WsClient.connected(port)   # a WebSocket takes the place given back
    await again.subscribe()
    assert await refused_ws(port) == (1013, "too many connections")

    sse.close()
    await eventually(lambda: service.connection_limiter.total == 2)
    sse, _ = await SseClient.connected(port)   # and so does an SSE stream
    assert (await sse_refusal(http, port)).code == 503


@with_settings(max_connections_per_address=2)
async def test_connections_per_address(port, http, service):
    ws, _ = await WsClient.connected(port)
    sse, _ = await SseClient.connected(port)
    assert await refused_ws(port) == (1013, "too many connections from this address")
    response = await sse_refusal(http, port)
    assert response.code == 503 and reason(response) == "too many connections from this address"

    # Another address (127.0.0.2 is loopback too) has its own count.
    stream = await TCPClient().connect("127.0.0.1", port, source_ip="127.0.0.2")
    await stream.write(f"GET /api/v1/sse/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    other = SseClient(stream)
    await other.receive()   # retry:
    assert (await other.receive())["event"] == "connection_established"
    assert service.connection_limiter.count("127.0.0.2") == 1

    ws.close()
    await eventually(lambda: service.connection_limiter.count("127.0.0.1") == 1)
    again, _ = await WsClient.connected(port)
    await again.subscribe()
    assert (await sse_refusal(http, port)).code == 503
