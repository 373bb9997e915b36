"""Peer server: the `websockets` library (v17, new asyncio implementation) with `broadcast()`.

    python bench/peers/websockets_broadcast.py --port P --publish-port Q

WebSockets are served by `websockets.asyncio.server.serve`; on publish, each event goes out with
`broadcast(subscribers, text)`, the library's documented way to send one message to many clients: it
frames the message per connection and writes it without waiting for any client. It is a fair peer: the
settings are those the `broadcast` docs recommend for many clients (`compression=None`), the envelope is
encoded once per event, and nothing is slowed down on purpose.

`websockets` speaks only the WebSocket handshake, so it cannot take `POST /api/v1/events`. The publish
and health endpoints are therefore served on `--publish-port` by a small Tornado `HTTPServer` running in
the same asyncio event loop (Tornado runs on asyncio, so one loop and one thread serve both). The
WebSocket port also answers `GET /api/v1/health` itself, through `process_request`.

Keep-alive pings are off (`ping_interval=None`): the default (every 20 s, close after 20 s without a
pong) would send ping frames that the benchmark's raw-socket client neither expects nor answers. Our
server and the Tornado peer send no pings either.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

from tornado.web import Application
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from _contract import (HEALTH_BODY, HEALTH_PATH, HOST, WS_PATH, Event, connection_established, parse_args,
                       subscription_confirmed, until_terminated)
from _tornado_api import api_routes

# The benchmark publishes one event type to one project, so every subscriber gets every event: there is
# no per-type or per-project filtering here.
subscribers: set[ServerConnection] = set()


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    path = request.path.split("?", 1)[0]
    if path == HEALTH_PATH:
        response = connection.respond(HTTPStatus.OK, HEALTH_BODY)
        response.headers["Content-Type"] = "application/json"
        return response
    if path != WS_PATH:
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    return None   # go on with the WebSocket handshake


async def dashboard(websocket: ServerConnection) -> None:
    try:
        await websocket.send(connection_established())
        async for message in websocket:
            try:
                request = json.loads(message)
            except ValueError:
                continue
            if isinstance(request, dict) and request.get("type") == "subscribe":
                subscribers.add(websocket)
                await websocket.send(subscription_confirmed(request))
    except ConnectionClosed:
        pass
    finally:
        subscribers.discard(websocket)


def fan_out(events: list[Event]) -> None:
    for event in events:
        broadcast(subscribers, event.text)


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0], publish_port=True)
    publish_server = Application(api_routes(fan_out)).listen(args.publish_port, address=HOST)
    async with serve(dashboard, HOST, args.port, compression=None, ping_interval=None,
                     process_request=process_request) as server:
        await until_terminated()
        server.close()   # closes every connection with 1001 (going away)
        await server.wait_closed()
    publish_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
