"""The WebSocket protocol: parsing client messages and the handler that speaks it.

Client messages are `subscribe`, `unsubscribe` and `ping` (docs/protocol.md). Everything the
server sends goes through the hub's queue for this connection, so replies, replays, events and heartbeats
reach the client in the order they were produced.
"""

from __future__ import annotations

from asyncio import Future
from dataclasses import dataclass
from typing import Any

from tornado.websocket import WebSocketHandler

from ..auth import Claims, ScopeError
from ..events import (PROJECT_ID_PATTERN, Event, EventFilter, EventTypeRegistry, EventValidationError, loads,
                      utc_now_iso, websocket_text_frame)
from ..connection import Connection
from ..service import RealtimeService
from ..ratelimit import Verdict
from .access import EXPIRED_CLOSE_CODE, Admission, scoped
from .base import ApiError, HttpBasics
from .security import origin_policy
from .writes import write_frames

PROTOCOL_VERSION = 1
POLICY_VIOLATION_CLOSE_CODE = 1008
TRY_AGAIN_LATER_CLOSE_CODE = 1013
MAX_EVENT_ID_LENGTH = 128


class ProtocolError(Exception):
    """A client message we cannot act on; `code` is one of the documented error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Subscribe:
    filter: EventFilter
    last_event_id: str | None


@dataclass(frozen=True)
class Unsubscribe:
    event_types: frozenset[str] | None   # None: all of them


@dataclass(frozen=True)
class Ping:
    id: Any


ClientMessage = Subscribe | Unsubscribe | Ping


def parse_client_message(raw: str | bytes, registry: EventTypeRegistry) -> ClientMessage:
    """Turn one text frame into a message, or raise ProtocolError with the code to report.

    Fields a message does not use are ignored, so clients may add their own (a request id, say).
    """
    if isinstance(raw, bytes):
        raise ProtocolError("invalid_message", "binary frames are not supported; send JSON text")
    try:
        message = loads(raw)
    except ValueError as error:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("invalid_message", "a message must be a JSON object with a string 'type'")
    kind = message["type"]
    if kind == "subscribe":
        return Subscribe(EventFilter(_event_types(message, registry), _project_id(message)),
                         _last_event_id(message))
    if kind == "unsubscribe":
        if message.get("event_types") == []:
            return Unsubscribe(frozenset())   # nothing to remove (only a missing list means "all")
        return Unsubscribe(_event_types(message, registry))
    if kind == "ping":
        return Ping(message.get("id"))
    raise ProtocolError("unknown_message_type",
                        f"unknown message type {kind!r}; expected subscribe, unsubscribe or ping")


def _event_types(message: dict[str, Any], registry: EventTypeRegistry) -> frozenset[str] | None:
    names = message.get("event_types")
    if names is None:
        return None
    if not isinstance(names, list):
        raise ProtocolError("invalid_message", "event_types must be a list of event type names")
    try:
        return registry.parse_type_list(names)
    except EventValidationError as error:
        raise ProtocolError("invalid_event_type", str(error)) from None


def _project_id(message: dict[str, Any]) -> str | None:
    project_id = message.get("project_id")
    if project_id is None:
        return None
    if not isinstance(project_id, str) or not PROJECT_ID_PATTERN.match(project_id):
        raise ProtocolError("invalid_message", "project_id must be a project id string or null")
    return project_id


def _last_event_id(message: dict[str, Any]) -> str | None:
    event_id = message.get("last_event_id")
    if event_id is None:
        return None
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH:
        raise ProtocolError("invalid_message",
                            f"last_event_id must be an event id string of at most {MAX_EVENT_ID_LENGTH} "
                            "characters")
    return event_id


class EventWebSocketHandler(HttpBasics, WebSocketHandler):
    """`/api/v1/dashboard/ws`. It is the hub's `Transport` for its own connection.

    Events are written as pre-built frames straight to the stream, the same bytes for every connection.
    permessage-deflate is negotiated only with `--websocket-compression`: a compressed connection then
    gets its own frames, deflated with the context it negotiated, which costs CPU per delivery.
    """

    name = "websocket"
    service: RealtimeService
    connection: Connection | None = None
    claims: Claims | None = None
    _compressor: Any = None
    admission: Admission | None = None

    def initialize(self, service: RealtimeService) -> None:
        self.service = service
        self.origin_policy = origin_policy(service.settings.cors_origins)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Check the token before the upgrade, so a refusal is a plain 401 with a JSON reason.

        A HEAD gets what the same request as a GET would, but is never upgraded: RFC 6455 §4.1 makes the
        opening handshake a GET. Without `Upgrade: websocket`, tornado refuses it as it refuses a GET."""
        self.claims = self.verified_claims()
        if self.request.method == "HEAD" and "websocket" in self.request.headers.get("Upgrade", "").lower():
            raise ApiError(400, "a WebSocket opening handshake must be a GET request")
        await super().get(*args, **kwargs)

    def finish(self, chunk: str | bytes | dict | None = None) -> Future[None]:
        """The answers that do not upgrade, as JSON errors like the rest of the API.

        Tornado's `get` refuses a request it cannot upgrade by finishing it itself: with a text reason
        (400 for a missing or wrong `Upgrade`, `Connection` or `Sec-WebSocket-Key`, 403 for a foreign
        origin), or with none (426 for an unsupported `Sec-WebSocket-Version`, whose header it has set).
        Such an answer keeps its status and headers and gets the JSON error body instead; the body that
        `write_error` built is already JSON (bytes), and passes."""
        status = self.get_status()
        if status >= 400 and not isinstance(chunk, bytes):
            chunk = self.error_json(status, reason=chunk if isinstance(chunk, str) else None)
        return super().finish(chunk)

    def check_origin(self, origin: str) -> bool:
        return super().check_origin(origin) or self.origin_policy.allows(origin)

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.service.settings.websocket_compression else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        # The hub already coalesces each loop turn's messages into one write; Nagle's algorithm would
        # only add a delayed-ACK stall (~40 ms) to every small message.
        self.set_nodelay(True)
        admission = Admission.admit(self.service, self.request.remote_ip or "", self.claims,
                                    lambda: self.close(EXPIRED_CLOSE_CODE, "token expired"))
        if isinstance(admission, str):
            self.close(TRY_AGAIN_LATER_CLOSE_CODE, admission)
            return
        self.admission = admission
        self.rate_guard = self.service.message_rate_guard()
        # The compressor tornado set up from the negotiated permessage-deflate parameters, if any.
        self._compressor = getattr(self.ws_connection, "_compressor", None)
        hub = self.service.hub
        # A WebSocket receives nothing until it subscribes.
        self.connection = hub.connect(self, EventFilter(types=frozenset()))
        self.connection.send_control(
            "connection_established", connection_id=self.connection.id, timestamp=utc_now_iso(),
            heartbeat_interval=hub.heartbeat_seconds, available_event_types=self.service.registry.names,
            protocol_version=PROTOCOL_VERSION)

    async def on_message(self, message: str | bytes) -> None:
        """Tornado reads the next message only after this returns, so a subscribe's replay finishes
        before the next subscribe replaces its filter."""
        connection = self.connection
        if connection is None or connection.closed:
            return
        verdict = self.rate_guard.check()
        if verdict is Verdict.CLOSE:
            self.close(POLICY_VIOLATION_CLOSE_CODE, "rate limit exceeded")
            return
        if verdict is Verdict.REJECT:
            connection.send_control("error", code="rate_limited",
                                    message="too many messages; slow down",
                                    retry_after=round(self.rate_guard.retry_after(), 3))
            return
        try:
            parsed = parse_client_message(message, self.service.registry)
        except ProtocolError as error:
            connection.send_control("error", code=error.code, message=error.message)
            return
        if isinstance(parsed, Ping):
            fields = {"timestamp": utc_now_iso()}
            if parsed.id is not None:
                fields["id"] = parsed.id
            connection.send_control("pong", **fields)
        elif isinstance(parsed, Subscribe):
            await self._subscribe(connection, parsed)
        else:
            names = self.service.registry.names
            self.service.hub.set_filter(connection, connection.filter.without(parsed.event_types, names))
            connection.send_control("unsubscription_confirmed",
                                    event_types=connection.filter.describe_types(names))

    async def _subscribe(self, connection: Connection, request: Subscribe) -> None:
        names = self.service.registry.names
        try:
            event_filter = scoped(request.filter, self.claims)
        except ScopeError as error:
            connection.send_control("error", code="forbidden", message=error.reason)
            return

        def confirm(recovered: bool, replayed: int) -> None:
            connection.send_control(
                "subscription_confirmed", event_types=event_filter.describe_types(names),
                project_id=request.filter.project_id, recovered=recovered, replayed=replayed)

        await self.service.hub.subscribe(connection, event_filter, request.last_event_id, confirm)

    def on_close(self) -> None:
        if self.connection is not None:
            self.service.hub.disconnect(self.connection)
        if self.admission is not None:
            self.admission.end()

    # --- Transport -------------------------------------------------------------------------------

    def event_frame(self, event: Event) -> bytes:
        if self._compressor is None:
            return event.ws_frame
        return websocket_text_frame(self._compressor.compress(event.json), compressed=True)

    def control_frame(self, kind: str, payload: bytes) -> bytes:
        return websocket_text_frame(payload)

    def send(self, data: bytes) -> Any:
        protocol = self.ws_connection
        if protocol is None or protocol.is_closing():
            return None
        return write_frames(protocol.stream, data)

    def close_connection(self, code: int, reason: str) -> None:
        self.close(code, reason)
