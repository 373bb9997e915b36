"""The HTTP API: publish and history, stats, projects, health."""

from __future__ import annotations

import math
import time
from typing import Any

from tornado import web

from .. import __version__
from ..brokers import BrokerUnavailableError
from ..events import EventTooLargeError, EventValidationError, validate_publish
from .access import TOKEN_CHALLENGE
from .base import ApiError, JsonHandler
from ..auth import ScopeError, bearer_token
from ..metrics import render
from .security import token_matches
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
        self._body = bytearray()
        settings = self.service.settings
        given = bearer_token(self.request.headers.get("Authorization"))
        if self.request.method != "POST":
            super().prepare()
            return
        if settings.publish_token and token_matches(settings.publish_token, given):
            self._allow_origin()   # the static publish token is enough; no JWT needed
            limit_key = "publish-token"
        elif settings.publish_token and not settings.jwt_enabled:
            raise ApiError(401, "publishing needs 'Authorization: Bearer <publish token>'",
                           headers=TOKEN_CHALLENGE)
        else:
            super().prepare()
            if self.claims is not None and not self.claims.publish:
                raise ApiError(403, "this token does not allow publishing")
            limit_key = (f"sub:{self.claims.subject}" if self.claims and self.claims.subject
                         else f"address:{self.request.remote_ip}")
        if not self.service.publish_buckets.take(limit_key):
            wait = self.service.publish_buckets.retry_after(limit_key)
            raise ApiError(429, f"too many publish requests; retry in {wait:.2f} s",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
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
            where = {"index": index} if isinstance(body, list) else {}
            try:
                drafts.append(validate_publish(item, self.service.registry, settings.max_event_bytes))
            except EventValidationError as error:
                status = 413 if isinstance(error, EventTooLargeError) else 400
                raise ApiError(status, str(error), **where) from None
            if self.claims is not None:
                try:
                    self.claims.check_publish(drafts[-1].project_id, drafts[-1].type)
                except ScopeError as error:
                    raise ApiError(403, error.reason, **where) from None
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
        event_filter = self.scoped_filter_from_query()
        limit_text = self.get_query_argument("limit", str(DEFAULT_HISTORY_LIMIT))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_HISTORY_LIMIT:
            raise ApiError(400, f"limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}")
        since = self.get_query_argument("since", "") or None
        if since is not None and len(since) > MAX_EVENT_ID_LENGTH:
            raise ApiError(400, f"since is longer than {MAX_EVENT_ID_LENGTH} characters")
        try:
            page = await self.service.broker.history(since, event_filter, int(limit_text))
        except BrokerUnavailableError as error:
            raise ApiError(503, f"the broker cannot read history right now: {error}") from None
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
        projects = self.service.projects.describe()
        if self.claims is not None:
            projects = [p for p in projects if self.claims.allows_project(p["id"])]
        self.write_json({"projects": projects})


class HealthHandler(JsonHandler):
    """200 while the broker accepts events, 503 when it does not (so a load balancer can tell). Open
    without a token, so that load balancers can probe it."""

    requires_token = False

    def get(self) -> None:
        broker = self.service.broker.health()
        healthy = broker.get("state") == "ok"
        self.write_json({"status": "ok" if healthy else "degraded", "version": __version__,
                         "uptime_seconds": round(time.time() - self.service.started_at, 3),
                         "connections": len(self.service.hub.connections()), "broker": broker,
                         "sources": {p.project_id: self.service.owns_sources(p.project_id)
                                     for p in self.service.sources}},
                        status=200 if healthy else 503)


class MetricsHandler(JsonHandler):
    """`GET /metrics` in the Prometheus text format (OpenMetrics when the scraper asks for it)."""

    def get(self) -> None:
        body, content_type = render(self.service.metrics.registry, self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)


class NotFoundHandler(JsonHandler):
    requires_token = False

    def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.path}")
