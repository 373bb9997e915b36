"""What every handler shares: HEAD, JSON errors and `Allow` (the WebSocket's too); JSON bodies and the
CORS headers (the HTTP handlers)."""

from __future__ import annotations

from typing import Any, Awaitable

from tornado import httputil, web

from ..auth import Claims, ScopeError, TokenError
from ..events import PROJECT_ID_PATTERN, EventFilter, EventValidationError, dumps, loads
from ..service import RealtimeService
from .access import TOKEN_CHALLENGE, authenticate, scoped
from .security import OriginPolicy, origin_policy


class ApiError(web.HTTPError):
    """An HTTP error whose `reason` text is shown to the client in the JSON body.

    `headers` are sent with the error (tornado clears headers set before an error is raised)."""

    def __init__(self, status: int, reason: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(status, log_message=reason)
        self.reason_text = reason
        self.headers = headers or {}
        self.extra = extra


JSON_CONTENT_TYPE = "application/json; charset=UTF-8"


class HttpBasics(web.RequestHandler):
    """What every handler answers alike, the WebSocket's included: HEAD as GET without the body, errors
    as `{"error": {"status", "reason", ...}}` (never tornado's HTML), and 405 with `Allow`."""

    service: RealtimeService

    def head(self, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """RFC 9110 §9.3.2: GET's status and headers, without the body (tornado drops the body of an answer
        to a HEAD and counts its Content-Length as for GET). Through `self.get`, so a subclass's checks
        (Jupyter's decorators) apply; a GET with side effects stops before them on a HEAD (sse.py,
        websocket.py)."""
        return self.get(*args, **kwargs)

    def allowed_methods(self) -> list[str]:
        """The methods this path answers: those the class implements. They make the `Allow` of a 405
        (RFC 9110 §15.5.6) and the CORS preflight's `Access-Control-Allow-Methods`."""
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower()) is not getattr(web.RequestHandler, m.lower())]

    def verified_claims(self) -> Claims | None:
        try:
            return authenticate(self, self.service)
        except TokenError as error:
            raise ApiError(401, error.reason, headers=TOKEN_CHALLENGE) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        self.finish(self.error_json(status_code, error, kwargs.get("reason")))

    def error_json(self, status_code: int, error: BaseException | None = None,
                   reason: str | None = None) -> bytes:
        """The error body, its Content-Type and headers: an ApiError's own, and `Allow` on a 405.

        `reason` as tornado's status line has it: the HTTPError's, the one given, or the standard phrase."""
        if isinstance(error, web.HTTPError) and error.reason:
            reason = error.reason
        body: dict[str, Any] = {"status": status_code,
                                "reason": reason or httputil.responses.get(status_code, "Unknown")}
        if isinstance(error, ApiError):
            body["reason"] = error.reason_text
            body.update(error.extra)
            for name, value in error.headers.items():
                self.set_header(name, value)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        return dumps({"error": body})


class JsonHandler(HttpBasics):
    """Base for the HTTP API: JSON bodies, CORS headers.

    With JWT auth on, `prepare` verifies the caller's token (401 without a valid one) unless the handler
    sets `requires_token = False`; `claims` then says what it may see."""

    origin_policy: OriginPolicy
    requires_token = True
    claims: Claims | None = None

    def initialize(self, service: RealtimeService) -> None:
        self.service = service
        self.origin_policy = origin_policy(service.settings.cors_origins)

    def compute_etag(self) -> None:
        """No ETag: these answers change with every event, and they are sent with no-store."""
        return None

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> None:
        self._allow_origin()
        if self.requires_token and self.request.method != "OPTIONS":   # preflights carry no credentials
            self.claims = self.verified_claims()

    def scoped_filter_from_query(self) -> EventFilter:
        """The query's filter within the token's scope; asking for more is a 403."""
        try:
            return scoped(self.filter_from_query(), self.claims)
        except ScopeError as error:
            raise ApiError(403, error.reason) from None

    def _allow_origin(self) -> None:
        """CORS headers for an allowed cross-origin caller (set again on errors, which clear them)."""
        origin = self.request.headers.get("Origin")
        if origin and not OriginPolicy.is_same_origin(origin, self.request.host) \
                and self.origin_policy.allows(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")

    def options(self, *args: Any) -> None:
        """CORS preflight: answered for allowed origins only."""
        origin = self.request.headers.get("Origin")
        if not origin or not self.origin_policy.allows(origin):
            raise ApiError(403, "cross-origin access from this origin is not allowed; "
                                "see --cors-origin")
        self.set_header("Access-Control-Allow-Methods", ", ".join(self.allowed_methods()))
        self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization, Last-Event-ID")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._allow_origin()
        super().write_error(status_code, **kwargs)

    def filter_from_query(self) -> EventFilter:
        """`event_types=a,b` (empty or absent: all) and `project_id=p` (absent: all projects)."""
        registry = self.service.registry
        names = [n.strip() for n in self.get_query_argument("event_types", "").split(",") if n.strip()]
        try:
            types = registry.parse_type_list(names)
        except EventValidationError as error:
            raise ApiError(400, str(error), valid_event_types=registry.names) from None
        project_id = self.get_query_argument("project_id", "") or None
        if project_id is not None and not PROJECT_ID_PATTERN.match(project_id):
            raise ApiError(400, f"project_id {project_id!r} is not a valid project id")
        return EventFilter(types, project_id)

    def json_body(self) -> Any:
        try:
            return loads(self.request.body)
        except ValueError as error:   # UnicodeDecodeError is a ValueError too
            raise ApiError(400, f"body is not valid JSON: {error}") from None
