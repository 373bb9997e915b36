"""Peer server: plain Tornado Server-Sent Events, one held-open `RequestHandler` per subscriber.

    python bench/peers/tornado_sse.py --port P

The usual Tornado SSE recipe: `get()` sets `text/event-stream`, writes a first message, flushes and then
waits until the client goes away; on publish, every handler gets `write(frame); flush()`. Tornado sends
a response without Content-Length as HTTP/1.1 chunked, one chunk per flush. It is a fair peer: the SSE
frame is built once per event, Tornado's defaults are kept (Nagle stays on, as in any plain Tornado
app), and there are no sleeps or per-connection re-encoding.
"""

from __future__ import annotations

import asyncio

from tornado.iostream import StreamClosedError
from tornado.web import Application, RequestHandler

from _contract import HOST, SSE_PATH, Event, connection_established, parse_args, until_terminated
from _tornado_api import api_routes

# The benchmark publishes one event type to one project, so the query string (event_types, project_id)
# is ignored and every subscriber gets every event.
subscribers: set[EventStream] = set()


class EventStream(RequestHandler):
    def initialize(self) -> None:
        self.closed = asyncio.Event()

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.write(f"event: connection_established\ndata: {connection_established()}\n\n")
        subscribers.add(self)   # before the client can see connection_established and publish
        try:
            await self.flush()
        except StreamClosedError:
            return
        await self.closed.wait()

    def on_connection_close(self) -> None:
        subscribers.discard(self)
        self.closed.set()


def fan_out(events: list[Event]) -> None:
    for event in events:
        frame = f"id: {event.id}\ndata: {event.text}\n\n".encode()
        for handler in subscribers:
            try:
                handler.write(frame)
                handler.flush()
            except StreamClosedError:
                pass   # on_connection_close removes it


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    app = Application([(SSE_PATH, EventStream), *api_routes(fan_out)])
    server = app.listen(args.port, address=HOST)
    await until_terminated()
    server.stop()
    for handler in list(subscribers):
        handler.finish()   # end each open stream with its last chunk, rather than cancel it mid-response


if __name__ == "__main__":
    asyncio.run(main())
