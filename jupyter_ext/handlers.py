"""The core's handlers with Jupyter Server's authentication: the same classes, one mixin apart.

Each class here subclasses a core handler (`autopm_realtime.web`) together with Jupyter's base handler,
so the wire protocol is the core's and everything about *who* may talk is Jupyter's:

- identity (token or login cookie), host check, XSRF on POST and CORS headers come from `JupyterHandler`
  (`APIHandler` for the JSON API: it also refuses cross-origin requests that Jupyter's origin settings
  do not allow and answers CORS preflights by Jupyter's rules); the WebSocket's origin check is
  `JupyterHandler.check_origin`. The core's own CORS policy is unused (the extension's `Settings` list
  no origin).
- every method is decorated: `@web.authenticated` + `@authorized` for HTTP and SSE, `@ws_authenticated`
  plus an authorizer check for the WebSocket, on the resource `autopm`, so Jupyter mounts them without a
  `JupyterServerAuthWarning` and they work with `ServerApp.allow_unauthenticated_access = False`. HEAD
  is `@web.authenticated` and runs the decorated `get` (the core's HEAD, `HttpBasics.head`).
- no login redirect: a request without a token or login cookie gets 403 on every endpoint, the page
  and the SSE stream included. Errors are the core's JSON, never Jupyter's HTML error page.

The method resolution order puts Jupyter first, then `_AuthenticatedFirst`, then the core class:
`JupyterHandler.prepare` ends by calling the next `prepare` in line, which checks that the request is
authenticated before the core's own `prepare` (which may answer a publish with 413 or 415) runs, even
when the server allows unauthenticated access to undecorated endpoints.
"""

from __future__ import annotations

from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

from autopm_realtime.service import RealtimeService
from autopm_realtime.web import api, page, sse, websocket
from autopm_realtime.web.app import routes
from autopm_realtime.web.base import HttpBasics, JsonHandler

#: The resource Jupyter's authorizer is asked about (`Authorizer.is_authorized(..., resource)`).
AUTH_RESOURCE = "autopm"

#: The WebSocket only subscribes and reads, so it asks for the same permission as the GET endpoints
#: (Jupyter's own sockets ask for "execute": they run code).
WEBSOCKET_ACTION = "read"


class JupyterAuthMixin:
    """What every handler here adds in front of Jupyter's base handler."""

    auth_resource = AUTH_RESOURCE

    def get_login_url(self) -> str:
        """`@web.authenticated` redirects browsers to this URL; these endpoints answer 403 instead."""
        raise web.HTTPError(403)

    @web.authenticated
    def head(self, *args: Any, **kwargs: Any) -> Any:
        """The core's HEAD: the `get` below, decorated, without the body (so the authorizer is asked once,
        about "read"). Marked authenticated for Jupyter's check of undecorated endpoints."""
        return HttpBasics.head(self, *args, **kwargs)   # type: ignore[arg-type]

    def set_default_headers(self) -> None:
        """The core's headers (`Cache-Control: no-store`, nosniff), then Jupyter's (its CSP and the
        headers configured in `ServerApp.tornado_settings`, which win)."""
        JsonHandler.set_default_headers(self)   # type: ignore[arg-type]
        super().set_default_headers()           # type: ignore[misc]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The core's JSON errors, not Jupyter's HTML error page."""
        JsonHandler.write_error(self, status_code, **kwargs)   # type: ignore[arg-type]


class _AuthenticatedFirst(web.RequestHandler):
    """Between Jupyter's `prepare` and the core's: refuse an unauthenticated request before the core
    looks at it (methods Jupyter marks `@allow_unauthenticated`, the CORS preflight, pass)."""

    def prepare(self) -> Any:
        method = getattr(self, (self.request.method or "").lower(), None)
        if not getattr(method, "__allow_unauthenticated", False) and not self.current_user:
            raise web.HTTPError(403)
        return super().prepare()


# --- the JSON API and the SSE stream (APIHandler: JSON, origin check, preflight) -----------------

@web.stream_request_body
class JupyterEventsHandler(JupyterAuthMixin, APIHandler, _AuthenticatedFirst, api.EventsHandler):
    """`POST` publishes (Jupyter's XSRF rules apply to cookie-authenticated posts), `GET` reads history."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await super().post()

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await super().get()


class JupyterStatsHandler(JupyterAuthMixin, APIHandler, _AuthenticatedFirst, api.StatsHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        super().get()


class JupyterProjectsHandler(JupyterAuthMixin, APIHandler, _AuthenticatedFirst, api.ProjectsHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        super().get()


class JupyterHealthHandler(JupyterAuthMixin, APIHandler, _AuthenticatedFirst, api.HealthHandler):
    @web.authenticated
    @authorized
    def get(self) -> None:
        super().get()


class JupyterMetricsHandler(JupyterAuthMixin, JupyterHandler, _AuthenticatedFirst, api.MetricsHandler):
    """A JupyterHandler, not an APIHandler: the latter labels every answer application/json."""

    options = web.RequestHandler.options   # no CORS preflight for a scrape

    @web.authenticated
    @authorized
    def get(self) -> None:
        super().get()


class JupyterEventStreamHandler(JupyterAuthMixin, APIHandler, _AuthenticatedFirst,
                                sse.EventStreamHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await super().get()


# --- the page (JupyterHandler: an HTML page keeps Jupyter's page CSP, not the API's) --------------

class JupyterDashboardPageHandler(JupyterAuthMixin, JupyterHandler, _AuthenticatedFirst,
                                  page.DashboardPageHandler):
    options = web.RequestHandler.options   # not the core's CORS preflight: Jupyter's rules apply

    @web.authenticated
    @authorized
    def get(self) -> None:
        super().get()


# --- the WebSocket --------------------------------------------------------------------------------

class JupyterEventWebSocketHandler(JupyterHandler, websocket.EventWebSocketHandler):
    """Authentication, then the authorizer, then tornado's handshake, whose origin check is now
    `JupyterHandler.check_origin`: the same host, `ServerApp.allow_origin(_pat)`, or a
    token-authenticated handshake (a script that holds the token is no cross-site page).

    Like jupyter_server's own event socket, this combines `JupyterHandler` with the WebSocket handler
    directly. `WebSocketMixin` would add the same origin check, plus its `ping_interval` and
    `ping_timeout` in milliseconds, which shadow tornado's in seconds (tornado 6.6 then warns on every
    handshake); without it, `ServerApp.websocket_ping_interval` and `_timeout` apply as configured."""

    auth_resource = AUTH_RESOURCE

    get_login_url = JupyterAuthMixin.get_login_url
    head = JupyterAuthMixin.head

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        allowed = await ensure_async(self.authorizer.is_authorized(
            self, self.current_user, WEBSOCKET_ACTION, self.auth_resource))
        if not allowed:
            raise web.HTTPError(403, f"not authorized to {WEBSOCKET_ACTION} {self.auth_resource}")
        await super().get(*args, **kwargs)

    @property
    def max_message_size(self) -> int:
        """The core's limit, not the server-wide tornado setting (Jupyter's kernels need their own)."""
        return self.service.settings.max_message_bytes

    # A refused handshake gets the core's JSON error body, not Jupyter's HTML page.
    write_error = websocket.EventWebSocketHandler.write_error


#: Each core handler and the class that serves it inside Jupyter.
JUPYTER_HANDLERS: dict[type, type] = {
    page.DashboardPageHandler: JupyterDashboardPageHandler,
    websocket.EventWebSocketHandler: JupyterEventWebSocketHandler,
    api.StatsHandler: JupyterStatsHandler,
    sse.EventStreamHandler: JupyterEventStreamHandler,
    api.EventsHandler: JupyterEventsHandler,
    api.ProjectsHandler: JupyterProjectsHandler,
    api.HealthHandler: JupyterHealthHandler,
    api.MetricsHandler: JupyterMetricsHandler,
}


def jupyter_routes(service: RealtimeService, prefix: str = "/autopm/") -> list[tuple[str, type, dict]]:
    """The core's routes (`autopm_realtime.web.app.routes`) with each handler's Jupyter class.

    `prefix` excludes the server's `base_url`, which the extension application puts in front."""
    mounted = []
    for path, handler, kwargs in routes(service, prefix):
        if handler not in JUPYTER_HANDLERS:
            raise TypeError(f"{handler.__module__}.{handler.__name__} (for {path}) has no Jupyter "
                            "variant in jupyter_ext.handlers; add one so that it is authenticated")
        mounted.append((path, JUPYTER_HANDLERS[handler], kwargs))
    return mounted
