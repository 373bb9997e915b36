"""The HTTP API: publish and history, stats, projects, health."""

from __future__ import annotations

import time
from typing import Any

from tornado import web

from .. import __version__
from ..brokers import BrokerUnavailableError
from ..events import EventTooLargeError, EventValidationError, validate_publish
from .base import ApiError, JsonHandler
from .security import bearer_token, token_matches
from .websocket import MAX_EVENT_ID_LENGTH

DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1_000


@web.stream_request_body
class EventsHandler(JsonHandler):
    """`POST /api/v1/events` publishes; `GET /api/v1/events` reads recent history.

    The body is streamed so that an oversized publish is refused with 413 from its Content-Length,
    before it is read; a chunked body is counted as it arrives.
    """

    _body: bytearray
    _too_large = False

    def prepare(self) -> None:
        super().prepare()
        self._body = bytearray()
        if self.request.method != "POST":
            return
        settings = self.service.settings
        if settings.publish_token and not token_matches(
                settings.publish_token, bearer_token(self.request.headers.get("Authorization"))):
            raise ApiError(401, "publishing needs 'Authorization: Bearer <publish token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="autopm-realtime"'})
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "publish with 'Content-Type: application/json'")
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > settings.max_publish_bytes:
            raise ApiError(413, f"body is {length} bytes; the limit is {settings.max_publish_bytes}")

    def data_received(self, chunk: bytes) -> None:
        if len(self._body) + len(chunk) > self.service.settings.max_publish_bytes:
            self._too_large = True
        elif not self._too_large:
            self._body += chunk

    async def post(self) -> None:
        settings = self.service.settings
        if self._too_large:
            raise ApiError(413, f"body is over the limit of {settings.max_publish_bytes} bytes")
        self.request.body = bytes(self._body)
        body = self.json_body()
        items = body if isinstance(body, list) else [body]
        if not items:
            raise ApiError(400, "an array publish needs at least one event")
        if len(items) > settings.max_publish_events:
            raise ApiError(413, f"{len(items)} events in one publish; the limit is "
                                f"{settings.max_publish_events}")
        drafts = []
        for index, item in enumerate(items):
            try:
                drafts.append(validate_publish(item, self.service.registry, settings.max_event_bytes))
            except EventValidationError as error:
                status = 413 if isinstance(error, EventTooLargeError) else 400
                where = {"index": index} if isinstance(body, list) else {}
                raise ApiError(status, str(error), **where) from None
        try:
            events = await self.service.broker.publish(drafts)
        except BrokerUnavailableError as error:
            raise ApiError(503, f"the broker cannot accept events right now: {error}") from None
        ids = [event.id for event in events]
        reply: dict[str, Any] = {"ids": ids}
        if not isinstance(body, list):
            reply["id"] = ids[0]
        self.write_json(reply, status=202)

    async def get(self) -> None:
        event_filter = self.filter_from_query()
        limit_text = self.get_query_argument("limit", str(DEFAULT_HISTORY_LIMIT))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_HISTORY_LIMIT:
            raise ApiError(400, f"limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}")
        since = self.get_query_argument("since", "") or None
        if since is not None and len(since) > MAX_EVENT_ID_LENGTH:
            raise ApiError(400, f"since is longer than {MAX_EVENT_ID_LENGTH} characters")
        page = await self.service.broker.history(since, event_filter, int(limit_text))
        self.write_json({"events": [event.envelope() for event in page.events],
                         "recovered": page.recovered,
                         "last_event_id": page.events[-1].id if page.events else since})


class StatsHandler(JsonHandler):
    """The guide's statistics for one transport; `total_connections` counts both."""

    def initialize(self, service: Any, transport: str) -> None:   # type: ignore[override]
        super().initialize(service)
        self.transport = transport

    def get(self) -> None:
        self.write_json(self.service.hub.snapshot(self.transport))


class ProjectsHandler(JsonHandler):
    def get(self) -> None:
        self.write_json({"projects": self.service.projects.describe()})


class HealthHandler(JsonHandler):
    """200 while the broker accepts events, 503 when it does not (so a load balancer can tell)."""

    def get(self) -> None:
        broker = self.service.broker.health()
        healthy = broker.get("state") == "ok"
        self.write_json({"status": "ok" if healthy else "degraded", "version": __version__,
                         "uptime_seconds": round(time.time() - self.service.started_at, 3),
                         "connections": len(self.service.hub.connections()), "broker": broker},
                        status=200 if healthy else 503)


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.path}")
