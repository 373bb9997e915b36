"""HTTP basics on every path: HEAD wherever GET is, `Allow` on every 405, JSON refusals on the WebSocket path.

Driven by clients we did not write: `curl` in a subprocess and Python's `http.client` (in a thread, over a
real socket; several requests go one after the other on one kept-alive connection, so an answer that sent
body bytes after a HEAD would spoil the next one). The last section runs the same checks against the
handlers mounted inside a real `jupyter server`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from autopm_realtime.tokens import mint_token
from autopm_realtime.web.app import routes
from support import with_settings

if TYPE_CHECKING:
    from test_jupyter_ext import JupyterServer

JSON = "application/json; charset=UTF-8"
HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
WS = "/api/v1/dashboard/ws"
SECRET = "http-methods-test-secret-" + "x" * 32

#: What each path accepts: the `Allow` of its 405 (OPTIONS where the server answers CORS preflights).
ALLOWED = {
    "/": "GET, HEAD, OPTIONS",
    WS: "GET, HEAD",
    "/api/v1/dashboard/ws/stats": "GET, HEAD, OPTIONS",
    "/api/v1/sse/events": "GET, HEAD, OPTIONS",
    "/api/v1/sse/stats": "GET, HEAD, OPTIONS",
    "/api/v1/events": "GET, HEAD, POST, OPTIONS",
    "/api/v1/projects": "GET, HEAD, OPTIONS",
    "/api/v1/health": "GET, HEAD, OPTIONS",
    "/metrics": "GET, HEAD, OPTIONS",
}
#: Paths whose GET answers with a body that does not change between two requests in a row.
STEADY = ["/", "/api/v1/projects", "/api/v1/dashboard/ws/stats", "/api/v1/sse/stats", "/api/v1/events"]
#: Paths whose body changes from one request to the next (uptime, process metrics).
CHANGING = ["/api/v1/health", "/metrics"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]   # names in lower case
    body: bytes

    def error(self) -> dict:
        """The API's JSON error body (inside Jupyter, APIHandler labels it without a charset)."""
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return json.loads(self.body)["error"]


async def curl(*args: str) -> Answer:
    """One request by `curl -i` (with `-I`: a HEAD, which curl reads without waiting for a body)."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "--max-time", "5", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines)}
    return Answer(int(status_line.split()[1]), headers, body)


def _exchange(port: int, requests: list[tuple[str, str, dict[str, str]]]) -> list[Answer]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.auto_open = 0   # a closed connection is an error here, not a reason to reconnect
    connection.connect()
    try:
        answers = []
        for method, path, headers in requests:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            answers.append(Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                                  response.read()))
        return answers
    finally:
        connection.close()


async def exchange(port: int, *requests: tuple[str, str, dict[str, str]]) -> list[Answer]:
    """The requests, one after the other on one kept-alive `http.client` connection."""
    return await asyncio.to_thread(_exchange, port, list(requests))


def same_but_the_body(head: Answer, get: Answer, *, steady: bool = True) -> None:
    """RFC 9110 §9.3.2: HEAD is GET without content; the header fields are the same."""
    assert head.body == b""
    assert head.status == get.status
    ignored = {"date"} if steady else {"date", "content-length"}
    assert {k: v for k, v in head.headers.items() if k not in ignored} == \
        {k: v for k, v in get.headers.items() if k not in ignored}
    if steady:
        assert int(head.headers["content-length"]) == len(get.body)
    else:   # the length of the body as it was when the HEAD was answered
        assert int(head.headers["content-length"]) > 0


# --- HEAD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", STEADY)
async def test_head_answers_with_the_status_and_headers_of_get_and_no_body(port, path):
    head, get = await exchange(port, ("HEAD", path, {}), ("GET", path, {}))
    assert head.status == 200
    same_but_the_body(head, get)


@pytest.mark.parametrize("path", CHANGING)
async def test_head_of_a_changing_answer_has_its_headers_and_a_length(port, path):
    head, get = await exchange(port, ("HEAD", path, {}), ("GET", path, {}))
    assert head.status == 200
    same_but_the_body(head, get, steady=False)


async def test_curl_sees_head_answered_on_every_get_path(port):
    for path in [*STEADY, *CHANGING]:
        answer = await curl("-I", f"http://127.0.0.1:{port}{path}")
        assert answer.status == 200, (path, answer)
        assert "content-length" in answer.headers and answer.body == b"", path


async def test_head_of_the_history_keeps_its_query_errors(port):
    path = "/api/v1/events?limit=0"
    head, get = await exchange(port, ("HEAD", path, {}), ("GET", path, {}))
    assert get.status == 400
    same_but_the_body(head, get)


@with_settings(jwt_secret=SECRET)
@pytest.mark.parametrize("path, status", [
    ("/api/v1/projects", 200), ("/api/v1/events", 200), ("/api/v1/sse/events", 200), ("/metrics", 200),
    ("/api/v1/dashboard/ws/stats", 200), (WS, 400),
])
async def test_head_needs_the_token_get_needs(port, path, status):
    token = {"Authorization": f"Bearer {mint_token(secret=SECRET, ttl_seconds=60)}"}
    # One connection each: a refusal in `prepare` ends the connection of the publish path (its body is
    # streamed, and tornado does not read an unread body to keep the connection).
    (refused_head,), (refused_get,), (head,) = [
        await exchange(port, request) for request in (("HEAD", path, {}), ("GET", path, {}),
                                                      ("HEAD", path, token))]
    assert refused_head.status == 401
    assert refused_head.headers["www-authenticate"].startswith("Bearer ")
    same_but_the_body(refused_head, refused_get)
    assert head.status == status and head.body == b""


@with_settings(jwt_secret=SECRET)
async def test_head_of_the_open_paths_needs_no_token(port):
    for path in ("/", "/api/v1/health"):
        assert (await curl("-I", f"http://127.0.0.1:{port}{path}")).status == 200, path


# --- HEAD of the event stream and of the WebSocket path -------------------------------------------

async def test_head_of_the_event_stream_sends_its_headers_and_opens_no_stream(port):
    head, stats = await exchange(port, ("HEAD", "/api/v1/sse/events?event_types=file_change", {}),
                                 ("GET", "/api/v1/sse/stats", {}))
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert head.headers["cache-control"] == "no-cache"
    assert head.headers["x-accel-buffering"] == "no"
    # GET's answer has no length (it is a stream), so HEAD's has none either: not even 0.
    assert "content-length" not in head.headers
    counts = json.loads(stats.body)
    assert counts["sse_connections"] == 0 and counts["counters"]["connections_opened"] == 0


@pytest.mark.parametrize("query", ["?event_types=file_change,deploy", "?project_id=my%20project",
                                   "?last_event_id=" + "x" * 129])
async def test_head_of_the_event_stream_keeps_its_query_errors(port, query):
    path = "/api/v1/sse/events" + query
    head, get = await exchange(port, ("HEAD", path, {}), ("GET", path, {}))
    assert get.status == 400
    same_but_the_body(head, get)


async def test_head_of_the_websocket_path_answers_as_a_plain_get(port):
    head, get = await exchange(port, ("HEAD", WS, {}), ("GET", WS, {}))
    assert get.status == 400
    same_but_the_body(head, get)


async def test_head_with_a_handshake_opens_no_websocket(port):
    """RFC 6455 §4.1: the opening handshake is a GET."""
    head, stats = await exchange(port, ("HEAD", WS, HANDSHAKE), ("GET", "/api/v1/dashboard/ws/stats", {}))
    assert head.status == 400 and head.headers["content-type"] == JSON
    assert "upgrade" not in head.headers
    assert json.loads(stats.body)["counters"]["connections_opened"] == 0


# --- 405 and Allow -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(ALLOWED))
async def test_a_405_names_the_methods_the_path_accepts(port, path):
    answer = await curl("-X", "DELETE", f"http://127.0.0.1:{port}{path}")
    assert answer.status == 405
    assert answer.headers["allow"] == ALLOWED[path]
    assert answer.error() == {"status": 405, "reason": "Method Not Allowed"}


async def test_a_method_tornado_does_not_know_gets_allow_on_every_route(port, service):
    for path, *_ in routes(service):
        answer = await curl("-X", "PROPFIND", f"http://127.0.0.1:{port}{path}")
        assert (answer.status, answer.headers.get("allow")) == (405, ALLOWED[path]), path
        assert answer.error()["status"] == 405


@pytest.mark.parametrize("path", list(ALLOWED))
async def test_every_method_allow_names_is_answered(port, path):
    """`Allow` lists only what works: none of its methods is a 405 (the stream's GET, which never ends,
    is test_sse.py's)."""
    methods = [m for m in ALLOWED[path].split(", ") if (m, path) != ("GET", "/api/v1/sse/events")]
    statuses = {method: (await exchange(port, (method, path, {})))[0].status for method in methods}
    assert 405 not in statuses.values(), statuses


# --- the WebSocket path refuses a request it cannot upgrade with JSON --------------------------------

@pytest.mark.parametrize("headers, status", [
    ({}, 400),
    ({**HANDSHAKE, "Upgrade": "h2c"}, 400),
    ({**HANDSHAKE, "Connection": "keep-alive"}, 400),
    ({k: v for k, v in HANDSHAKE.items() if k != "Sec-WebSocket-Key"}, 400),
    ({**HANDSHAKE, "Origin": "https://evil.example"}, 403),
], ids=["plain", "other-upgrade", "no-connection-upgrade", "no-key", "foreign-origin"])
async def test_a_refused_handshake_gets_the_json_error_body(port, headers, status):
    answer = await curl(*(f"-H{name}: {value}" for name, value in headers.items()),
                        f"http://127.0.0.1:{port}{WS}")
    assert answer.status == status
    error = answer.error()
    assert error["status"] == status and error["reason"]
    assert int(answer.headers["content-length"]) == len(answer.body)


async def test_an_unsupported_websocket_version_is_426_in_json_with_the_version_to_use(port):
    answer = await curl(*(f"-H{name}: {value}" for name, value in
                          {**HANDSHAKE, "Sec-WebSocket-Version": "99"}.items()),
                        f"http://127.0.0.1:{port}{WS}")
    assert answer.status == 426
    # RFC 6455 §4.4: the versions the server speaks (tornado before 6.5 also lists the drafts 7 and 8)
    assert "13" in answer.headers["sec-websocket-version"].replace(" ", "").split(",")
    assert answer.error() == {"status": 426, "reason": "Upgrade Required"}


# --- inside Jupyter Server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """One real `jupyter server` with the extension, as tests/test_jupyter_ext.py starts them (skipped
    like that module when jupyter_server is not installed)."""
    from test_jupyter_ext import JupyterServer

    server = JupyterServer(tmp_path_factory.mktemp("jupyter-http") / "server", base_url="/jh/")
    try:
        yield server.wait_until_serving()
    finally:
        server.kill()


def jupyter_url(jupyter: JupyterServer, path: str) -> str:
    return jupyter.url + path.lstrip("/")


def authorization(jupyter: JupyterServer) -> str:
    return f"-HAuthorization: token {jupyter.token}"


async def test_inside_jupyter_head_answers_as_get_does_and_needs_the_same_login(jupyter):
    for path in [*STEADY, *CHANGING, "/api/v1/sse/events"]:
        head = await curl("-I", authorization(jupyter), jupyter_url(jupyter, path))
        assert head.status == 200 and head.body == b"", (path, head)
        if path in STEADY:
            get = await curl(authorization(jupyter), jupyter_url(jupyter, path))
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert int(head.headers["content-length"]) == len(get.body), path
        refused = await curl("-I", jupyter_url(jupyter, path))
        assert refused.status == 403, path
    stats = await curl(authorization(jupyter), jupyter_url(jupyter, "/api/v1/sse/stats"))
    assert json.loads(stats.body)["sse_connections"] == 0
    jupyter.assert_clean_log()   # Jupyter warns about a HEAD that is not marked authenticated


async def test_inside_jupyter_a_405_names_the_methods_the_path_accepts(jupyter):
    # Jupyter answers the API's preflights (APIHandler); the page and /metrics have none.
    expected = {**ALLOWED, "/": "GET, HEAD", "/metrics": "GET, HEAD"}
    for path, allow in expected.items():
        answer = await curl("-X", "DELETE", authorization(jupyter), jupyter_url(jupyter, path))
        assert (answer.status, answer.headers.get("allow")) == (405, allow), path
        assert answer.error()["status"] == 405, path


async def test_inside_jupyter_the_websocket_path_refuses_a_plain_get_with_json(jupyter):
    answer = await curl(authorization(jupyter), jupyter_url(jupyter, WS))
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert json.loads(answer.body)["error"]["status"] == 400
    head = await curl("-I", authorization(jupyter), jupyter_url(jupyter, WS))
    assert head.status == 400 and head.headers["content-length"] == answer.headers["content-length"]
