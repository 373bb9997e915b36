"""Who the caller is and what it may see, for every handler: the JWT check and the scope of a filter.

With no `--jwt-secret`/`--jwt-public-key` there are no claims and everything is allowed (the server binds
loopback, or sits behind Jupyter's own auth). With one, every request and connection but the health check
and the page itself must carry a valid token, as `Authorization: Bearer`, a `token` query argument or an
`autopm_token` cookie.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Callable

from tornado.ioloop import IOLoop

from ..auth import TOKEN_COOKIE, TOKEN_QUERY_ARGUMENT, Claims, TokenError, token_from_request
from ..events import EventFilter

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from ..service import RealtimeService

TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="autopm-realtime"'}
QUERY_TOKEN = re.compile(r"([?&]token=)[^&]*")
access_log = logging.getLogger("tornado.access")


def log_request(handler: RequestHandler) -> None:
    """Tornado's access line, with the value of a `token` query argument replaced: access logs are
    read by more people than tokens should be."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        request = handler.request
        uri = QUERY_TOKEN.sub(r"\1[redacted]", request.uri or "")
        access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, uri, request.remote_ip,
                       1000 * request.request_time())


def authenticate(handler: RequestHandler, service: RealtimeService) -> Claims | None:
    """The request's verified claims; None when auth is off. Raises TokenError (answer 401)."""
    verifier = service.verifier
    if verifier is None:
        return None
    token = token_from_request(handler.request.headers.get("Authorization"),
                               handler.get_query_argument(TOKEN_QUERY_ARGUMENT, None),
                               handler.get_cookie(TOKEN_COOKIE))
    if token is None:
        raise TokenError("a token is required: send 'Authorization: Bearer <token>', a 'token' query "
                         "argument or an 'autopm_token' cookie")
    return verifier.verify(token)


EXPIRED_CLOSE_CODE = 4001


class Admission:
    """A long-lived connection's place under the connection limits and its token's expiry timer:
    taken when it opens, given back exactly once when it ends, however it ends."""

    __slots__ = ("_service", "_address", "_expiry")

    def __init__(self, service: RealtimeService, address: str, expiry: object | None) -> None:
        self._service: RealtimeService | None = service
        self._address = address
        self._expiry = expiry

    @classmethod
    def admit(cls, service: RealtimeService, address: str, claims: Claims | None,
              on_expiry: Callable[[], None]) -> Admission | str:
        """An admission, or the reason there is none (too many connections). `on_expiry` runs when
        the token expires: no connection outlives its token."""
        refusal = service.connection_limiter.acquire(address)
        if refusal is not None:
            return refusal
        expiry = None
        if claims is not None and claims.expires_at is not None:
            expiry = IOLoop.current().call_later(max(0.0, claims.expires_at - time.time()), on_expiry)
        return cls(service, address, expiry)

    def end(self) -> None:
        if self._service is None:
            return
        self._service.connection_limiter.release(self._address)
        if self._expiry is not None:
            IOLoop.current().remove_timeout(self._expiry)
        self._service = self._expiry = None


def scoped(event_filter: EventFilter, claims: Claims | None) -> EventFilter:
    """The filter narrowed to what the token allows. Asking for more than that raises ScopeError
    (answer 403 or a WebSocket `error`) rather than being quietly trimmed."""
    if claims is None:
        return event_filter
    claims.check_project(event_filter.project_id)
    return EventFilter(claims.narrow_types(event_filter.types), event_filter.project_id, claims.projects)

