"""The asyncio client against real servers: filters, resume, restart, fallback, liveness, giving up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError

from autopm_realtime.client import AccessRefused, ClientGaveUp, RealtimeClient, endpoint_urls, subscribe
from autopm_realtime.config import ProjectSpec, Settings
from autopm_realtime.service import RealtimeService
from autopm_realtime.tokens import mint_token
from autopm_realtime.web.app import routes
from autopm_realtime.web.sse import EventStreamHandler
from autopm_realtime.web.websocket import EventWebSocketHandler
from support import eventually, file_change, free_port, progress, running_service, subscribed, with_settings

TRANSPORTS = ["websocket", "sse"]
WAIT = 5.0
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


def base_url(port: int, prefix: str = "/") -> str:
    return f"http://127.0.0.1:{port}{prefix}"


async def next_message(client: RealtimeClient, timeout: float = WAIT) -> dict[str, Any]:
    return await asyncio.wait_for(client.__anext__(), timeout)


async def receive_after_subscribing(client: RealtimeClient, service: RealtimeService,
                                    publish_all: Callable[[], Any]) -> dict[str, Any]:
    """Start the client, wait until the server has its subscription, publish, return the first message."""
    first = asyncio.ensure_future(next_message(client))
    await eventually(lambda: len(subscribed(service)) == 1 or first.done())
    await publish_all()
    return await first


async def published_id(http: AsyncHTTPClient, port: int, body: Any, prefix: str = "/",
                       token: str | None = None) -> str:
    authorization = {"Authorization": f"Bearer {token}"} if token else {}
    response = await http.fetch(f"{base_url(port, prefix)}api/v1/events", method="POST",
                                body=json.dumps(body), raise_error=False,
                                headers={"Content-Type": "application/json", **authorization})
    assert response.code == 202, response.body
    return json.loads(response.body)["id"]


async def consume(client: RealtimeClient) -> list[dict[str, Any]]:
    return [message async for message in client]


@pytest.mark.parametrize("transport", ["auto", "sse"])
async def test_receives_events_filtered_by_type_and_project(port, http, service, transport):
    async def publish_mixed():
        await published_id(http, port, progress(10, 1, 10))                       # another type
        await published_id(http, port, file_change("other.py", project="other"))  # another project
        await published_id(http, port, file_change("wanted.py"))

    async with subscribe(base_url(port), event_types=["file_change"], project_id="my-project",
                         transport=transport) as client:
        event = await receive_after_subscribing(client, service, publish_mixed)
        assert (event["type"], event["project_id"], event["data"]["file_path"]) == \
            ("file_change", "my-project", "wanted.py")
        assert set(event) == {"type", "id", "project_id", "timestamp", "data"}
        assert client.last_event_id == event["id"]
        assert client.transport == ("sse" if transport == "sse" else "websocket")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resumes_after_a_dropped_connection_with_exactly_the_missed_events(
        port, http, service, transport):
    async with RealtimeClient(base_url(port), event_types=["file_change"], transport=transport,
                              **FAST) as client:
        first = await receive_after_subscribing(
            client, service, lambda: published_id(http, port, file_change("a.py")))
        assert first["data"]["file_path"] == "a.py"
        # The client is idle between events; the server drops it as a slow consumer meanwhile.
        for connection in service.hub.connections():
            connection.transport.close_connection(4008, "slow consumer")
        missed = [await published_id(http, port, file_change("b.py")),
                  await published_id(http, port, progress(50, 1, 2)),
                  await published_id(http, port, file_change("c.py"))]
        replayed = [await next_message(client), await next_message(client)]
        assert [e["id"] for e in replayed] == [missed[0], missed[2]]
        live_id = await published_id(http, port, file_change("d.py"))
        live = await next_message(client)
        assert live["id"] == live_id   # nothing repeated between the replay and the live event
        assert service.hub.stats.resumes_recovered == 1
        assert client.last_event_id == live_id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_starts_from_a_given_last_event_id(port, http, service, transport):
    before = await published_id(http, port, file_change("before.py"))
    after = await published_id(http, port, file_change("after.py"))
    async with subscribe(base_url(port), last_event_id=before, transport=transport) as client:
        assert (await next_message(client))["id"] == after


@contextlib.asynccontextmanager
async def serving(app: Application, port: int) -> AsyncIterator[None]:
    """Serve a custom `app` (other routes than the standard ones) on `port`."""
    server = HTTPServer(app)
    server.add_sockets(bind_sockets(port, "127.0.0.1"))
    try:
        yield
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_restart_on_memory_broker_yields_reset_then_live_events(io_loop, http, tmp_path,
                                                                            transport):
    settings = Settings(port=free_port(), projects=(ProjectSpec(tmp_path, "my-project"),))
    async with RealtimeClient(base_url(settings.port), transport=transport, **FAST) as client:
        async with running_service(settings) as service:
            before = await receive_after_subscribing(
                client, service, lambda: published_id(http, settings.port, file_change("before.py")))
        async with running_service(settings) as service:   # a new broker, a new epoch
            reset = await next_message(client)
            assert reset["type"] == "reset" and reset["last_event_id"] == before["id"], reset
            assert isinstance(reset["reason"], str) and reset["reason"]
            assert service.hub.stats.resumes_lost == 1
            after_id = await published_id(http, settings.port, file_change("after.py"))
            after = await next_message(client)
            assert (after["id"], after["data"]["file_path"]) == (after_id, "after.py")


async def test_falls_back_to_sse_when_the_websocket_is_refused(port, http, service):
    refused_origin = {"Origin": "https://elsewhere.example"}   # not listed by --cors-origin: 403
    async with subscribe(base_url(port), headers=refused_origin, **FAST) as client:
        event = await receive_after_subscribing(
            client, service, lambda: published_id(http, port, file_change("fallback.py")))
        assert event["data"]["file_path"] == "fallback.py"
        assert client.transport == "sse"
        assert [c.transport.name for c in service.hub.connections()] == ["sse"]


async def test_forced_websocket_does_not_fall_back(port, service):
    client = RealtimeClient(base_url(port), transport="websocket", headers={"Origin": "https://x.example"},
                            max_retries=1, **FAST)
    with pytest.raises(ClientGaveUp, match="403"):
        await next_message(client)
    assert client.transport == "websocket"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_event_type_raises_value_error_with_the_servers_reason(port, service, transport):
    client = subscribe(base_url(port), event_types=["file_change", "no_such_type"], transport=transport,
                       max_retries=5, **FAST)
    with pytest.raises(ValueError, match="no_such_type.*valid types: file_change"):   # not ClientGaveUp
        await next_message(client)


@pytest.mark.parametrize("transport", ["auto", "sse"])
async def test_gives_up_after_max_retries_when_nothing_listens(io_loop, transport):
    client = subscribe(base_url(free_port()), transport=transport, max_retries=3,
                       backoff_initial=0.001, backoff_max=0.002)
    with pytest.raises(ClientGaveUp, match="4 failed attempts") as raised:
        await next_message(client)
    assert isinstance(raised.value, ConnectionError)
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert client.transport == ("sse" if transport == "sse" else "websocket")   # a refused port: no fallback


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_counts_each_failed_attempt(io_loop, transport):
    attempts = 0

    def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        client = subscribe(base_url(server.sockets[0].getsockname()[1]), transport=transport,
                           max_retries=2, backoff_initial=0.001, backoff_max=0.002)
        with pytest.raises(ClientGaveUp):
            await next_message(client)
        assert attempts == 3   # the first attempt and max_retries retries
    finally:
        server.close()
        await server.wait_closed()


def refuse_every_other_attempt(handler: Any) -> None:
    attempts = handler.settings["attempts"]
    attempts.append(handler.request.path)
    if len(attempts) % 2:
        raise HTTPError(503)


class FlakyWebSocket(EventWebSocketHandler):
    """Refuses every other handshake with 503; accepts the rest and hangs up once they subscribed."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        refuse_every_other_attempt(self)
        await super().get(*args, **kwargs)

    async def on_message(self, message: str | bytes) -> None:
        await super().on_message(message)
        self.connection.flush()
        self.close(4008, "slow consumer")


class FlakyEventStream(EventStreamHandler):
    """Refuses every other request with 503; ends the rest right after `connection_established`."""

    async def get(self) -> None:
        refuse_every_other_attempt(self)
        IOLoop.current().add_callback(self._hang_up)
        await super().get()

    def _hang_up(self) -> None:
        self.connection.flush()
        self.close_connection(1000, "bye")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_successful_connection_resets_the_failure_count(io_loop, service, transport):
    attempts: list[str] = []
    kwargs = {"service": service}
    app = Application([("/api/v1/dashboard/ws", FlakyWebSocket, kwargs),
                       ("/api/v1/sse/events", FlakyEventStream, kwargs)], attempts=attempts)
    port = free_port()
    async with serving(app, port):
        client = subscribe(base_url(port), transport=transport, max_retries=1,
                           backoff_initial=0.001, backoff_max=0.002)
        consumer = asyncio.ensure_future(consume(client))
        await eventually(lambda: len(attempts) >= 8 or consumer.done())
        assert not consumer.done(), consumer   # without the reset: ClientGaveUp at the 4th attempt
        await client.aclose()
        assert await asyncio.wait_for(consumer, WAIT) == []


@pytest.mark.parametrize("settings_overrides", [{"heartbeat": 0.1}])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_silent_connection_is_treated_as_dead(port, http, service, transport):
    async with RealtimeClient(base_url(port), transport=transport, **FAST) as client:
        first = await receive_after_subscribing(
            client, service, lambda: published_id(http, port, file_change("a.py")))
        assert first["data"]["file_path"] == "a.py"   # heartbeats flowed meanwhile and were not yielded
        # The hub forgets the connection but its socket stays open: no events, no heartbeats.
        [connection] = service.hub.connections()
        service.hub.disconnect(connection)
        missed = await published_id(http, port, file_change("b.py"))
        assert (await next_message(client, timeout=2.0))["id"] == missed
        assert service.hub.stats.resumes_recovered == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_base_url_with_a_path_prefix(io_loop, http, service, transport):
    port = free_port()
    async with serving(Application(routes(service, "/base/autopm/")), port):
        async with subscribe(base_url(port, "/base/autopm"), transport=transport) as client:
            event = await receive_after_subscribing(
                client, service, lambda: published_id(http, port, file_change(), "/base/autopm/"))
            assert event["type"] == "file_change"
            assert client.transport == transport


def test_endpoint_urls():
    assert endpoint_urls("https://h.example:8888/base/autopm/") == (
        "wss://h.example:8888/base/autopm/api/v1/dashboard/ws",
        "https://h.example:8888/base/autopm/api/v1/sse/events")
    assert endpoint_urls("http://127.0.0.1:8000") == (
        "ws://127.0.0.1:8000/api/v1/dashboard/ws", "http://127.0.0.1:8000/api/v1/sse/events")
    with pytest.raises(ValueError):
        endpoint_urls("ftp://h.example/")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_aclose_ends_an_iteration_waiting_in_another_task(port, service, transport):
    client = subscribe(base_url(port), transport=transport)
    consumer = asyncio.ensure_future(consume(client))
    await eventually(lambda: len(subscribed(service)) == 1)
    await client.aclose()
    assert await asyncio.wait_for(consumer, WAIT) == []
    await eventually(lambda: not service.hub.connections())


# --- tokens --------------------------------------------------------------------------------------

SECRET = "client-test-secret-" + "c" * 32


def jwt(**claims: Any) -> str:
    return mint_token(**{"secret": SECRET, "ttl_seconds": 60, "projects": "*", **claims})


@with_settings(jwt_secret=SECRET)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_token_is_sent_on_every_connection_of_either_transport(port, http, service, transport):
    publisher = jwt(publish=True)
    async with RealtimeClient(base_url(port), token=jwt(), transport=transport, **FAST) as client:
        first = await receive_after_subscribing(
            client, service, lambda: published_id(http, port, file_change("a.py"), token=publisher))
        assert first["data"]["file_path"] == "a.py"
        for connection in service.hub.connections():
            connection.transport.close_connection(4008, "slow consumer")
        missed = await published_id(http, port, file_change("b.py"), token=publisher)
        assert (await next_message(client))["id"] == missed   # the reconnect carried the token too
        assert client.transport == transport and service.hub.stats.resumes_recovered == 1


@with_settings(jwt_secret=SECRET)
@pytest.mark.parametrize("transport", ["auto", "websocket", "sse"])
@pytest.mark.parametrize("token, options, status, reason", [   # tokens minted when the test runs
    (lambda: None, {}, 401, "a token is required"),
    (lambda: mint_token(secret="another-secret-" + "o" * 32, ttl_seconds=60), {}, 401, "bad signature"),
    (lambda: jwt(projects=["my-project"]), {"project_id": "elsewhere"}, 403,
     "token does not grant project 'elsewhere'"),
    (lambda: jwt(event_types=["risk_alert"]), {"event_types": ["file_change"]}, 403,
     "token does not grant event type(s) file_change"),
], ids=["no-token", "bad-signature", "other-project", "other-type"])
async def test_a_refused_token_raises_access_refused_at_once_with_the_servers_reason(
        port, service, transport, token, options, status, reason):
    client = RealtimeClient(base_url(port), token=token(), transport=transport, max_retries=100, **FAST,
                            **options)
    with pytest.raises(AccessRefused) as refused:   # not ClientGaveUp after 100 retries
        await next_message(client)
    assert refused.value.status == status and refused.value.reason.startswith(reason), refused.value
    assert isinstance(refused.value, PermissionError)
    # A 401 is the server's verdict on the token, not a refused upgrade: no fallback to SSE.
    assert client.transport == ("sse" if transport == "sse" else "websocket")


def test_a_token_must_be_sendable_and_is_never_shown():
    for token in ("two\nlines-secret", "caf\u00e9-secret"):
        with pytest.raises(ValueError, match="token") as refused:
            RealtimeClient("http://127.0.0.1:8000/", token=token)
        assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match="token= or an Authorization header"):
        RealtimeClient("http://127.0.0.1:8000/", token="t", headers={"authorization": "Bearer u"})
    assert RealtimeClient("http://127.0.0.1:8000/", token=" t0k ").headers == {"Authorization": "Bearer t0k"}
    assert RealtimeClient("http://127.0.0.1:8000/", token=" ").headers == {}   # blank: no token


@pytest.mark.parametrize("url", ["http://me:secret@127.0.0.1:8000/", "http://127.0.0.1:8000/?token=secret",
                                 "http://127.0.0.1:8000/#token=secret", "ftp://secret@h.example/"])
def test_a_url_with_credentials_is_refused_without_showing_them(url):
    with pytest.raises(ValueError, match="server URL") as refused:
        RealtimeClient(url)
    assert "secret" not in str(refused.value)
