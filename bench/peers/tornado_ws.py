"""Peer server: plain Tornado WebSockets, fanned out with `write_message` in a loop.

    python bench/peers/tornado_ws.py --port P

This is the textbook Tornado broadcast (the chat demo's pattern): a set of `WebSocketHandler`s, and on
publish `handler.write_message(text)` for every subscriber. It is a fair peer because it is exactly what
the Tornado docs suggest, with Tornado's defaults (no compression, no keep-alive pings), the envelope
JSON built once per event, and nothing slowed down on purpose. Against our server it shows what the
hub's pre-framed, queued fan-out buys over the straightforward per-connection `write_message`.
"""

from __future__ import annotations

import asyncio
import json

from tornado.web import Application
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from _contract import (HOST, WS_PATH, Event, connection_established, parse_args, subscription_confirmed,
                       until_terminated)
from _tornado_api import api_routes

# The benchmark publishes one event type to one project, so every subscriber gets every event: there is
# no per-type or per-project filtering here (a real server would need it; it would cost a dict lookup).
subscribers: set[DashboardSocket] = set()


class DashboardSocket(WebSocketHandler):
    def open(self) -> None:
        self.write_message(connection_established())

    def on_message(self, message: str | bytes) -> None:
        try:
            request = json.loads(message)
        except ValueError:
            return
        if isinstance(request, dict) and request.get("type") == "subscribe":
            subscribers.add(self)
            self.write_message(subscription_confirmed(request))

    def on_close(self) -> None:
        subscribers.discard(self)


def fan_out(events: list[Event]) -> None:
    for event in events:
        for handler in subscribers:
            try:
                handler.write_message(event.text)
            except WebSocketClosedError:
                pass   # on_close removes it


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    app = Application([(WS_PATH, DashboardSocket), *api_routes(fan_out)])
    server = app.listen(args.port, address=HOST)
    await until_terminated()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
