"""Routes and the Tornado application: the one place that says which path is which handler."""

from __future__ import annotations

from typing import Any

from tornado import web

from ..service import RealtimeService
from .api import (EventsHandler, HealthHandler, MetricsHandler, NotFoundHandler, ProjectsHandler,
                  StatsHandler)
from .access import log_request
from .page import DashboardPageHandler
from .sse import EventStreamHandler
from .websocket import EventWebSocketHandler


def routes(service: RealtimeService, prefix: str = "/") -> list[tuple[str, type, dict[str, Any]]]:
    """The wire contract's paths under `prefix` (`/` standalone, `{base_url}autopm/` in Jupyter)."""
    base = prefix.rstrip("/")
    kwargs = {"service": service}
    return [
        (base + "/", DashboardPageHandler, kwargs),
        (base + "/api/v1/dashboard/ws", EventWebSocketHandler, kwargs),
        (base + "/api/v1/dashboard/ws/stats", StatsHandler, {**kwargs, "transport": "websocket"}),
        (base + "/api/v1/sse/events", EventStreamHandler, kwargs),
        (base + "/api/v1/sse/stats", StatsHandler, {**kwargs, "transport": "sse"}),
        (base + "/api/v1/events", EventsHandler, kwargs),
        (base + "/api/v1/projects", ProjectsHandler, kwargs),
        (base + "/api/v1/health", HealthHandler, kwargs),
        (base + "/metrics", MetricsHandler, kwargs),
    ]


def make_app(service: RealtimeService, **tornado_settings: Any) -> web.Application:
    return web.Application(
        routes(service),
        default_handler_class=NotFoundHandler,
        default_handler_args={"service": service},
        websocket_max_message_size=service.settings.max_message_bytes,
        log_function=log_request,
        **tornado_settings,
    )
