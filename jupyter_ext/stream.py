"""A project's events in a notebook: `stream_events`, an async iterator with no gap at its start.

    async with asyncio.timeout(30):
        async for event in stream_events("my-project"):
            print(event["type"], event["data"])

It runs on the core's `RealtimeClient` (reconnect, resume, SSE fallback) and adds what a notebook needs:

- the server is found by `jupyter_ext.discovery.resolve_server` (arguments, then `AUTOPM_URL` /
  `AUTOPM_TOKEN`, then the Jupyter server that owns the kernel);
- **no gap at the start**: before subscribing it reads the server's position from the history API and
  resumes from there, so every matching event published after the call starts is yielded, even one
  published before the subscription reached the server. `history=N` also yields the N most recent
  matching events first. (On a server that has never had an event there is no position to resume from:
  what was published before the subscription took hold is then read from the history instead.)
- **reload after a reset**: when the client cannot resume (the server restarted, or the gap is older
  than its history) the `{"type": "reset", ...}` dict is yielded, followed by the matching events the
  server still has that were not yielded yet; every event is yielded at most once (ids of the last
  `SEEN_IDS` events are remembered).

`publish_events` posts events to the same server. Both send the token as `Authorization: Bearer <token>`
on every request and connection (reconnects included): a Jupyter server's token, or for a standalone
server a JWT (`--jwt-secret`/`--jwt-public-key`) or, to publish, its `--publish-token`. A token the server
refuses raises `PermissionError` (`autopm_realtime.client.AccessRefused` from the stream) at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, AsyncIterator, Iterable, Mapping
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from autopm_realtime.client import RealtimeClient

from .discovery import ServerInfo, ServerNotFound, resolve_server

log = logging.getLogger(__name__)

MAX_PAGE = 1000            # the most events the history API returns at once
SEEN_IDS = 4096            # ids remembered to never yield an event twice
SUBSCRIPTION_POLL = 0.02   # seconds between looks at whether a first subscription reached the server
HTTP_TIMEOUT = 10.0        # seconds for each history or publish request

Message = dict[str, Any]


async def stream_events(project_id: str | None = None, event_types: Iterable[str] | str | None = None,
                        url: str | None = None, token: str | None = None, *, history: int = 0,
                        **client_options: Any) -> AsyncIterator[Message]:
    """`async for event in stream_events(...)`: the matching events published from now on (after the
    `history` most recent ones), and a `{"type": "reset"}` dict when a resume could not be served.

    `event_types` is a list or a comma-separated string (default: all types); `project_id` None means
    every project. `client_options` go to `RealtimeClient` (`transport`, `max_retries`, ...). Stop early
    with `break` inside `contextlib.aclosing(...)`, or bound the loop with `asyncio.timeout(...)`.
    """
    server = resolve_server(url, token)
    async for message in follow(server, project_id=project_id, event_types=event_types, history=history,
                                **client_options):
        yield message


async def follow(server: ServerInfo, *, project_id: str | None = None,
                 event_types: Iterable[str] | str | None = None, history: int = 0,
                 **client_options: Any) -> AsyncIterator[Message]:
    """`stream_events` for a server already resolved (the widgets use this)."""
    if not 0 <= history <= MAX_PAGE:
        raise ValueError(f"history must be from 0 to {MAX_PAGE}")
    types = _type_list(event_types)
    seen = _RecentIds(SEEN_IDS)
    try:
        latest = await recent_events(server, limit=1)
        backlog = await recent_events(server, project_id, types, limit=history) if history else []
        position = backlog[-1]["id"] if backlog else (latest[-1]["id"] if latest else None)
        catch_up = MAX_PAGE       # without a position, nothing in the history is older than this call
    except OSError as error:      # down for now: the client retries, and catches up once connected
        log.info("cannot read the history of %s (%s); following live events", server.url, error)
        backlog, position, catch_up = [], None, history
    for event in backlog:
        seen.add(event["id"])
        yield event
    client = RealtimeClient(server.url, event_types=types, project_id=project_id, last_event_id=position,
                            headers=server.headers(), **client_options)
    async with client:
        if position is None and catch_up:
            # No id to resume from: what was published before the subscription reached the server is
            # read from the history once it has (or once the first live event shows where it starts).
            first = asyncio.ensure_future(client.__anext__())
            try:
                while not first.done() and not client.connected:
                    await asyncio.wait([first], timeout=SUBSCRIPTION_POLL)
                until = first.result().get("id") if first.done() else None
                for event in await _missed(server, project_id, types, catch_up, until=until):
                    if seen.add(event["id"]):
                        yield event
                message = await first
            finally:
                first.cancel()
            if message.get("type") == "reset" or seen.add(message["id"]):
                yield message
        async for message in client:
            if message.get("type") == "reset":
                yield message
                for event in await _missed(server, project_id, types, MAX_PAGE, until=None):
                    if seen.add(event["id"]):
                        yield event
            elif seen.add(message["id"]):
                yield message


async def _missed(server: ServerInfo, project_id: str | None, types: list[str], limit: int,
                  until: str | None) -> list[Message]:
    """The latest `limit` matching events; with `until`, only those before that event (none when it is
    not among them). Nothing when the history cannot be read: the live events go on regardless."""
    try:
        page = await recent_events(server, project_id, types, limit=limit)
    except OSError as error:
        log.warning("cannot read the history of %s (%s); events may be missing", server.url, error)
        return []
    if until is None:
        return page
    ids = [event["id"] for event in page]
    return page[:ids.index(until)] if until in ids else []


async def recent_events(server: ServerInfo, project_id: str | None = None,
                        event_types: Iterable[str] | str | None = None, *, limit: int = 100) -> list[Message]:
    """The latest `limit` matching events in the server's history, oldest first."""
    query: dict[str, Any] = {"limit": limit}
    if project_id is not None:
        query["project_id"] = project_id
    types = _type_list(event_types)
    if types:
        query["event_types"] = ",".join(types)
    body = await request_json(server, "api/v1/events", query=query)
    return list(body["events"])


async def publish_events(events: Mapping[str, Any] | Iterable[Mapping[str, Any]], url: str | None = None,
                         token: str | None = None) -> list[str]:
    """POST one event (`{type, project_id, data}`) or several to the server; their ids. `token` (else
    `AUTOPM_TOKEN`) may be a JWT that allows publishing or a standalone server's publish token: the server
    reads both from the same header."""
    server = resolve_server(url, token)
    body = [dict(events)] if isinstance(events, Mapping) else [dict(event) for event in events]
    reply = await request_json(server, "api/v1/events", body=body)
    return list(reply["ids"])


async def request_json(server: ServerInfo, path: str, *, query: Mapping[str, Any] | None = None,
                       body: Any = None, timeout: float = HTTP_TIMEOUT) -> Any:
    """GET (or POST `body` as JSON) `path` under the server's URL and decode the JSON answer.

    Raises PermissionError for 401/403 (a token is missing or wrong), ServerNotFound for 404 (no hub at
    that URL), ValueError with the server's reason for other 4xx, ConnectionError when the server cannot
    be reached or fails (5xx).
    """
    target = server.url + path + ("?" + urlencode(query) if query else "")
    headers = server.headers()
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = HTTPRequest(target, method="GET" if body is None else "POST", headers=headers,
                          body=None if body is None else json.dumps(body),
                          connect_timeout=timeout, request_timeout=timeout)
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as error:
        raise _refusal(server, target, error) from None
    return json.loads(response.body)


def _refusal(server: ServerInfo, target: str, error: HTTPClientError) -> Exception:
    code = error.code
    reason = _reason(error) or error.message or f"HTTP {code}"
    if code in (401, 403):
        hint = "the token was refused" if server.token else \
            "it needs a token: pass token= or set AUTOPM_TOKEN"
        return PermissionError(f"{target}: HTTP {code}, {hint} ({reason})")
    if code == 404:
        return ServerNotFound(f"{target}: HTTP 404, no autopm hub at {server.url} (inside Jupyter the URL "
                              "ends in autopm/ and the jupyter_ext server extension must be enabled)")
    if 400 <= code < 500:
        return ValueError(f"{target}: HTTP {code}, {reason}")
    return ConnectionError(f"{target}: {reason if code == 599 else f'HTTP {code}, {reason}'}")


def _reason(error: HTTPClientError) -> str | None:
    """The server's `error.reason`, when the body is our JSON error."""
    try:
        return str(json.loads(error.response.body)["error"]["reason"])   # type: ignore[union-attr]
    except (AttributeError, ValueError, KeyError, TypeError):
        return None


def _type_list(event_types: Iterable[str] | str | None) -> list[str]:
    if isinstance(event_types, str):
        event_types = event_types.split(",")
    return [name.strip() for name in event_types or () if name.strip()]


class _RecentIds:
    """The last `size` ids added; `add` says whether an id is new."""

    def __init__(self, size: int) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._size = size

    def add(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())
        return True
