"""The health and publish endpoints as plain Tornado handlers, for the three Tornado-served peers.

Not a peer itself. `tornado_ws.py` and `tornado_sse.py` mount these beside their stream handler;
`websockets_broadcast.py` serves them on its `--publish-port`, since `websockets` cannot take a POST.
Each peer passes its own `fan_out`, called synchronously for the parsed events before the 202 goes out.
"""

from __future__ import annotations

from typing import Any, Callable

from tornado.web import RequestHandler

from _contract import HEALTH_BODY, HEALTH_PATH, PUBLISH_PATH, Event, accepted, build_events, dumps

FanOut = Callable[[list[Event]], None]


class HealthHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(HEALTH_BODY)


class PublishHandler(RequestHandler):
    def initialize(self, fan_out: FanOut) -> None:
        self.fan_out = fan_out

    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        try:
            events = build_events(self.request.body)
        except ValueError as error:
            self.set_status(400)
            self.write(dumps({"error": str(error)}))
            return
        self.fan_out(events)
        self.set_status(202)
        self.write(accepted(events))


def api_routes(fan_out: FanOut) -> list[tuple[str, type[RequestHandler], dict[str, Any]]]:
    return [(HEALTH_PATH, HealthHandler, {}), (PUBLISH_PATH, PublishHandler, {"fan_out": fan_out})]
