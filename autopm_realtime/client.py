"""An asyncio client for the event hub: WebSocket with resume, Server-Sent Events as the fallback.

    async for event in subscribe("http://127.0.0.1:8000", event_types=["file_change"]):
        print(event["type"], event["data"])

The client reconnects by itself and resumes after the last event it yielded, so the caller sees every
event once and in order for as long as the server's history covers a gap. When it cannot (the server
restarted, or the gap is older than its history) the caller receives one
`{"type": "reset", "reason": ..., "last_event_id": ...}` dict and then live events. Both transports look
the same to the caller: envelopes (docs/protocol.md) and that one reset dict, nothing else.

`token=` is sent as `Authorization: Bearer <token>` on every connection of either transport: a JWT for a
server started with `--jwt-secret`/`--jwt-public-key`, or a Jupyter Server's token (Jupyter reads the same
header). A header, not the `token` query argument browsers have to use, so that it stays out of URLs and
access logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
from contextlib import aclosing
from typing import Any, AsyncGenerator, Callable, Iterable, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from .events import CONTROL_TYPES

log = logging.getLogger(__name__)

TRANSPORTS = ("auto", "websocket", "sse")
WEBSOCKET_PATH = "api/v1/dashboard/ws"
SSE_PATH = "api/v1/sse/events"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
ASSUMED_HEARTBEAT_SECONDS = 30.0   # the server's default, used if it does not announce its own
LIVENESS_FACTOR = 2.5              # silence longer than this many heartbeats means a dead connection
READ_SIZE = 64 * 1024              # the most an SSE read takes from the socket at once
ERROR_BODY_LIMIT = 64 * 1024
REFUSED_SUBSCRIPTION_CODES = frozenset({"invalid_event_type", "invalid_message"})
FORBIDDEN_CODE = "forbidden"       # the WebSocket's answer to a subscription beyond the token
SENDABLE_TOKEN = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")   # printable ASCII, as a header carries it

Message = dict[str, Any]


class ClientGaveUp(ConnectionError):
    """`max_retries` consecutive connection attempts failed; the last failure is the `__cause__`."""


class AccessRefused(PermissionError):
    """The server refused the token (HTTP 401) or what it was asked for with it (403: another project,
    other event types, publishing). Retrying with the same token cannot succeed, so this is raised at once.
    `status` and `reason` are the server's; neither holds the token."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class _Dropped(ConnectionError):
    """The connection ended, went silent or stopped making sense: reconnect and resume."""


class _WebSocketRefused(ConnectionError):
    """The WebSocket handshake was answered with an HTTP status: the endpoint is refused, not down."""


def server_url(url: str) -> str:
    """A server's base URL, ending in `/` (it may carry a path prefix, such as Jupyter's `autopm/`).

    A user name, password, query or fragment is refused rather than dropped: the URL is shown in log
    lines and error messages, which must never show a credential (a token goes in `token=` instead).
    The error shows the URL with those parts masked, for the same reason."""
    try:
        parts = urlsplit(url)
    except ValueError:   # e.g. an unclosed IPv6 bracket
        raise ValueError("server URL is not a valid http:// or https:// URL") from None
    _, at, host = parts.netloc.rpartition("@")
    shown = urlunsplit((parts.scheme, "***@" + host if at else host, parts.path,
                        "***" if parts.query else "", "***" if parts.fragment else ""))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL {shown!r} must be http:// or https:// with a host")
    if at or "?" in url or "#" in url:
        raise ValueError(f"server URL {shown!r} must not carry a user, password, query or fragment: "
                         "give a token separately")
    return url if url.endswith("/") else url + "/"


def endpoint_urls(url: str) -> tuple[str, str]:
    """The WebSocket and SSE URLs under a server's base URL."""
    parts = urlsplit(server_url(url))
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return (urlunsplit((ws_scheme, parts.netloc, parts.path + WEBSOCKET_PATH, "", "")),
            urlunsplit((parts.scheme, parts.netloc, parts.path + SSE_PATH, "", "")))


def bearer_authorization(token: str | None) -> dict[str, str]:
    """`{"Authorization": "Bearer <token>"}`, or no header without a token. The standalone server reads a
    JWT and its publish token there, Jupyter Server its own token. Surrounding white space is dropped (as
    the server drops it); a token a header cannot carry (a line break, non-ASCII) is refused here, by a
    message that does not repeat it, rather than by an HTTP library's error that would."""
    token = (token or "").strip()
    if not token:
        return {}
    if not SENDABLE_TOKEN.fullmatch(token):
        raise ValueError("the token has characters an HTTP header cannot carry (only printable ASCII)")
    return {"Authorization": f"Bearer {token}"}


class RealtimeClient:
    """Subscribes to a server and yields its events, reconnecting and resuming on its own.

    `transport="auto"` speaks WebSocket and falls back to SSE when the WebSocket handshake is answered
    with an HTTP status below 500 (a proxy or policy that refuses upgrades will keep refusing them); once
    fallen back, the client stays on SSE for the rest of its life. A refused TCP connection (the server
    is down) is a failed attempt, not a reason to fall back. `"websocket"` and `"sse"` force one transport.

    Reconnects wait a random time up to `backoff_initial`, doubling per consecutive failure up to
    `backoff_max` (exponential backoff with full jitter, so restarted servers are not stormed). After
    the first attempt plus `max_retries` retries fail in a row, iteration raises `ClientGaveUp`; a
    connection that gets as far as its subscription resets the count. A subscription the server refuses
    as invalid (unknown event type, bad project id) raises `ValueError` at once, and a refused token
    `AccessRefused`: retrying cannot fix either. (A WebSocket handshake refused with 403 still falls back
    first, as a proxy may refuse upgrades that way; a 401 is the server's own verdict on the token.)

    `token` is sent as `Authorization: Bearer` on every connection; `headers` are sent as they are.

    `last_event_id` is the id of the last event yielded (where a resume starts); `transport` is the one
    in use. Every buffer is bounded: WebSocket reads wait for the consumer (one message queued), SSE
    reads at most `READ_SIZE` at a time, and no message may exceed `max_message_bytes`.
    """

    def __init__(self, url: str, *, event_types: Iterable[str] | str | None = None,
                 project_id: str | None = None, last_event_id: str | None = None,
                 transport: str = "auto", max_retries: int = 100, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, headers: Mapping[str, str] | None = None,
                 token: str | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        if max_retries < 0 or backoff_initial < 0 or backoff_max < 0:
            raise ValueError("max_retries and the backoff times must not be negative")
        self.url = url
        self.websocket_url, self.sse_url = endpoint_urls(url)
        if isinstance(event_types, str):
            event_types = event_types.split(",")
        self.event_types = [name.strip() for name in event_types or () if name.strip()]
        self.project_id = project_id
        self.last_event_id = last_event_id
        self.transport = "sse" if transport == "sse" else "websocket"
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.headers = dict(headers or {})
        if token and any(name.lower() == "authorization" for name in self.headers):
            raise ValueError("give token= or an Authorization header, not both")
        self.headers.update(bearer_authorization(token))
        for name, value in self.headers.items():
            if any(c in f"{name}{value}" for c in "\r\n"):
                raise ValueError(f"header {name!r} contains a line break")
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self._may_fall_back = transport == "auto"
        self._closing = asyncio.Event()
        self._close_current: Callable[[], None] | None = None
        self._connected = False
        self._events: AsyncGenerator[Message, None] | None = None

    # --- the caller's side ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the current connection has its subscription confirmed (events flow live)."""
        return self._connected

    def __aiter__(self) -> RealtimeClient:
        return self

    async def __anext__(self) -> Message:
        if self._events is None:
            self._events = self._run()
        return await self._events.__anext__()

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection and end iteration, also for a task that is waiting for the next event."""
        self._closing.set()
        if self._close_current is not None:
            self._close_current()
        events = self._events
        if events is not None and not events.ag_running:   # else another task's read ends it
            await events.aclose()

    # --- connecting and reconnecting -----------------------------------------------------------

    async def _run(self) -> AsyncGenerator[Message, None]:
        failures = 0
        first = True
        while not self._closing.is_set():
            if not first:
                await self._pause(self._backoff(failures))
                if self._closing.is_set():
                    return
            first = False
            self._connected = False
            session = self._websocket_session() if self.transport == "websocket" else self._sse_session()
            try:
                async with aclosing(session) as messages:
                    async for message in messages:
                        if self._closing.is_set():
                            return
                        yield message
                raise _Dropped("the connection ended")   # sessions end by raising; kept for safety
            except AccessRefused:   # a PermissionError, so an OSError: not one more failed attempt
                raise
            except _WebSocketRefused as error:
                if self._may_fall_back:
                    log.info("WebSocket refused at %s (%s); falling back to SSE for good",
                             self.websocket_url, error)
                    self.transport = "sse"
                    first = True
                    continue
                failure: Exception = error
            except (OSError, HTTPClientError, WebSocketError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as error:
                failure = error
            if self._closing.is_set():
                return
            if self._connected:
                failures = 0
                log.info("%s connection to %s lost (%s); resuming after %s", self.transport, self.url,
                         _describe(failure), self.last_event_id)
                continue
            failures += 1
            if failures > self.max_retries:
                raise ClientGaveUp(f"gave up on {self.url} after {failures} failed attempts in a row "
                                   f"over {self.transport}: {_describe(failure)}") from failure
            log.warning("cannot connect to %s over %s (%s); retry %d of %d", self.url, self.transport,
                        _describe(failure), failures, self.max_retries)

    def _backoff(self, failures: int) -> float:
        ceiling = self.backoff_initial * 2 ** max(failures - 1, 0)
        return random.uniform(0, min(self.backoff_max, ceiling))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the client is closed."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- what both transports share ------------------------------------------------------------

    def _raise_if_closing(self) -> None:
        """`aclose()` ran while this connection was being opened, so it could not close it."""
        if self._closing.is_set():
            raise _Dropped("the client is closed")

    def _event(self, message: Message) -> Message | None:
        """The message as an event to yield, or None for a control message (or a repeated event)."""
        event_id = message.get("id")
        if message.get("type") in CONTROL_TYPES or not isinstance(event_id, str) \
                or event_id == self.last_event_id:
            return None
        self.last_event_id = event_id
        return message

    @staticmethod
    def _reset(tried: str | None, reason: Any) -> Message:
        return {"type": "reset", "reason": reason or "the server could not resume after this id",
                "last_event_id": tried}

    @staticmethod
    def _liveness(established: Message) -> float:
        interval = established.get("heartbeat_interval")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            interval = ASSUMED_HEARTBEAT_SECONDS
        return LIVENESS_FACTOR * interval

    # --- WebSocket -----------------------------------------------------------------------------

    async def _websocket_session(self) -> AsyncGenerator[Message, None]:
        tried = self.last_event_id
        request = HTTPRequest(self.websocket_url, headers=self.headers,
                              connect_timeout=self.connect_timeout, request_timeout=self.connect_timeout)
        try:
            connection = await websocket_connect(request, max_message_size=self.max_message_bytes)
        except HTTPClientError as error:
            if error.code == 401:
                body = error.response.body if error.response is not None else b""
                raise AccessRefused(401, _error_reason(body) or "unauthorized") from None
            if error.code < 500:
                raise _WebSocketRefused(f"HTTP {error.code}") from error
            raise
        except WebSocketError as error:   # answered 2xx without upgrading
            raise _WebSocketRefused(str(error)) from error
        except ValueError as error:       # a malformed handshake answer
            raise _Dropped(f"bad WebSocket handshake: {error}") from error
        self._close_current = connection.close
        try:
            self._raise_if_closing()
            established = await self._receive(connection, self.connect_timeout)
            if established.get("type") != "connection_established":
                raise _Dropped(f"expected connection_established, got {established.get('type')!r}")
            liveness = self._liveness(established)
            await connection.write_message(json.dumps(self._subscribe_message(tried)))
            while (confirmed := await self._receive(connection, liveness)).get("type") \
                    != "subscription_confirmed":
                if confirmed.get("type") == "error":
                    if confirmed.get("code") == FORBIDDEN_CODE:
                        raise AccessRefused(403, confirmed.get("message") or FORBIDDEN_CODE)
                    if confirmed.get("code") in REFUSED_SUBSCRIPTION_CODES:
                        raise ValueError(confirmed.get("message") or confirmed.get("code"))
                    raise _Dropped(f"subscription refused: {confirmed.get('code')}: "
                                   f"{confirmed.get('message')}")
            self._connected = True
            if tried is not None and confirmed.get("recovered") is False:
                yield self._reset(tried, f"the server cannot resume after event {tried}: it restarted, "
                                         "or the id is older than its history")
            while True:
                event = self._event(await self._receive(connection, liveness))
                if event is not None:
                    yield event
        finally:
            self._close_current = None
            connection.close()

    def _subscribe_message(self, last_event_id: str | None) -> Message:
        message: Message = {"type": "subscribe"}
        if self.event_types:
            message["event_types"] = self.event_types
        if self.project_id is not None:
            message["project_id"] = self.project_id
        if last_event_id is not None:
            message["last_event_id"] = last_event_id
        return message

    @staticmethod
    async def _receive(connection: WebSocketClientConnection, timeout: float) -> Message:
        try:
            raw = await asyncio.wait_for(connection.read_message(), timeout)
        except asyncio.TimeoutError:
            raise _Dropped(f"nothing received for {timeout:g} s") from None
        if raw is None:
            raise _Dropped(f"closed by the server: {connection.close_code} {connection.close_reason or ''}")
        return _decode(raw)

    # --- Server-Sent Events --------------------------------------------------------------------

    async def _sse_session(self) -> AsyncGenerator[Message, None]:
        tried = self.last_event_id
        parts = urlsplit(self.sse_url)
        secure = parts.scheme == "https"
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            parts.hostname, parts.port or (443 if secure else 80), limit=READ_SIZE,
            ssl=ssl.create_default_context() if secure else None), self.connect_timeout)
        self._close_current = writer.close
        try:
            self._raise_if_closing()
            writer.write(self._sse_request(tried))
            status, headers = await asyncio.wait_for(_read_head(reader), self.connect_timeout)
            body = _HttpBody(reader, headers)
            if status != 200:
                reason = _error_reason(await asyncio.wait_for(body.read_all(ERROR_BODY_LIMIT),
                                                              self.connect_timeout)) or f"HTTP {status}"
                if status == 400:
                    raise ValueError(reason)
                if status in (401, 403):
                    raise AccessRefused(status, reason)
                raise _Dropped(f"HTTP {status}: {reason}")
            if not headers.get("content-type", "").lower().startswith("text/event-stream"):
                raise _Dropped(f"not an event stream: {headers.get('content-type')!r}")
            parser = _SseParser(self.max_message_bytes)
            timeout = self.connect_timeout
            while True:
                try:
                    piece = await asyncio.wait_for(body.read(), timeout)
                except asyncio.TimeoutError:
                    raise _Dropped(f"nothing received for {timeout:g} s") from None
                if not piece:
                    raise _Dropped("the server ended the stream")
                for name, data in parser.feed(piece):
                    if name is None or name == "message":
                        event = self._event(_decode(data))
                        if event is not None:
                            yield event
                    elif name == "connection_established":
                        timeout = self._liveness(_decode(data))
                        self._connected = True
                    elif name == "reset":
                        yield self._reset(tried, _decode(data).get("reason"))
        finally:
            self._close_current = None
            writer.close()

    def _sse_request(self, last_event_id: str | None) -> bytes:
        parts = urlsplit(self.sse_url)
        query = {}
        if self.event_types:
            query["event_types"] = ",".join(self.event_types)
        if self.project_id is not None:
            query["project_id"] = self.project_id
        target = parts.path + ("?" + urlencode(query) if query else "")
        headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "text/event-stream",
                   "Cache-Control": "no-cache", "Accept-Encoding": "identity", "Connection": "close",
                   **self.headers}
        if last_event_id is not None:
            if any(c in last_event_id for c in "\r\n"):
                raise _Dropped("the last event id contains a line break")
            headers["Last-Event-ID"] = last_event_id
        lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def subscribe(url: str, *, event_types: Iterable[str] | str | None = None, project_id: str | None = None,
              last_event_id: str | None = None, transport: str = "auto", max_retries: int = 100,
              backoff_initial: float = 0.5, backoff_max: float = 30.0,
              headers: Mapping[str, str] | None = None, token: str | None = None) -> RealtimeClient:
    """`async for event in subscribe(url, ...)`: a `RealtimeClient`; call its `aclose()` when done early."""
    return RealtimeClient(url, event_types=event_types, project_id=project_id, last_event_id=last_event_id,
                          transport=transport, max_retries=max_retries, backoff_initial=backoff_initial,
                          backoff_max=backoff_max, headers=headers, token=token)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _decode(raw: str | bytes) -> Message:
    """A server message as a dict; anything else means the connection cannot be trusted."""
    try:
        message = json.loads(raw)
    except ValueError as error:   # also UnicodeDecodeError
        raise _Dropped(f"the server sent something that is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise _Dropped("the server sent JSON that is not an object")
    return message


def _error_reason(body: bytes) -> str | None:
    """`error.reason` from the server's JSON error body, if that is what it is."""
    try:
        return str(json.loads(body)["error"]["reason"])
    except (ValueError, KeyError, TypeError):
        return None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """An HTTP/1.1 response's status and headers (names lowercased); the reader's limit bounds it."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    version, _, rest = status_line.partition(" ")
    status = rest.partition(" ")[0]
    if not version.startswith("HTTP/") or not status.isdigit():
        raise _Dropped(f"not an HTTP response: {status_line[:80]!r}")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status), headers


class _HttpBody:
    """A response body read piece by piece (each at most `READ_SIZE` bytes), whatever its framing:
    chunked (as Tornado streams), Content-Length, or until the server closes."""

    def __init__(self, reader: asyncio.StreamReader, headers: Mapping[str, str]) -> None:
        self._reader = reader
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length", "")
        self._remaining = int(length) if not self._chunked and length.isdigit() else None
        self._chunk_left = 0
        self._done = False

    async def read(self) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        if self._done:
            return b""
        if self._chunked:
            return await self._read_chunked()
        if self._remaining == 0:
            self._done = True
            return b""
        piece = await self._reader.read(READ_SIZE if self._remaining is None
                                        else min(READ_SIZE, self._remaining))
        if not piece:
            if self._remaining:
                raise _Dropped("the response ended early")
            self._done = True
        elif self._remaining is not None:
            self._remaining -= len(piece)
        return piece

    async def _read_chunked(self) -> bytes:
        if self._chunk_left == 0:
            size_line = await self._reader.readuntil(b"\r\n")
            try:
                self._chunk_left = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Dropped(f"bad chunk size line {size_line[:40]!r}") from None
            if self._chunk_left == 0:   # the last chunk; trailers are not needed, the socket closes
                self._done = True
                return b""
        piece = await self._reader.read(min(READ_SIZE, self._chunk_left))
        if not piece:
            raise _Dropped("the stream ended inside a chunk")
        self._chunk_left -= len(piece)
        if self._chunk_left == 0:
            await self._reader.readexactly(2)   # the CRLF closing the chunk
        return piece

    async def read_all(self, limit: int) -> bytes:
        data = b""
        while len(data) < limit and (piece := await self.read()):
            data += piece
        return data[:limit]


class _SseParser:
    """An incremental `text/event-stream` parser: bytes in, `(event name or None, data)` out.

    Lines end in LF or CRLF (a lone CR, which no server of ours sends, is not supported). `id:` and
    `retry:` are ignored: every envelope carries its id, and the client's own backoff replaces `retry`.
    The pending partial line and the message being assembled are both bounded by `max_bytes`.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._name: str | None = None
        self._data: list[str] = []
        self._data_size = 0

    def feed(self, piece: bytes) -> list[tuple[str | None, str]]:
        if b"\n" not in piece:
            self._keep_partial(piece)
            return []
        *lines, rest = b"".join((*self._partial, piece)).split(b"\n")
        self._partial, self._partial_size = [], 0
        self._keep_partial(rest)
        messages = []
        for raw in lines:
            try:
                line = raw.rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                raise _Dropped("the event stream is not UTF-8") from None
            if not line:
                if self._data:
                    messages.append((self._name, "\n".join(self._data)))
                self._name, self._data, self._data_size = None, [], 0
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    self._name = value
                elif field == "data":
                    self._data.append(value)
                    self._data_size += len(value)
                    if self._data_size > self._max_bytes:
                        raise _Dropped(f"an SSE message is over {self._max_bytes} bytes")
        return messages

    def _keep_partial(self, piece: bytes) -> None:
        if piece:
            self._partial.append(piece)
            self._partial_size += len(piece)
            if self._partial_size > self._max_bytes:
                raise _Dropped(f"an SSE line is over {self._max_bytes} bytes")
