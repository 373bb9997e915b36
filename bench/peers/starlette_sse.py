"""Peer server: Starlette under uvicorn, SSE through sse-starlette, one asyncio.Queue per subscriber.

    python bench/peers/starlette_sse.py --port P

This is the FastAPI-style design the project started from (FastAPI is Starlette plus validation and
docs, which add nothing to a stream): the publish route puts each event into every subscriber's bounded
`asyncio.Queue`, and each subscriber's async generator awaits its queue and yields the event to
`EventSourceResponse`, which frames and sends it. One uvicorn process, default settings otherwise
(uvicorn picks httptools/uvloop if installed, else h11 and the asyncio loop). It is a fair peer: the
envelope JSON and its `ServerSentEvent` are built once per event and shared by all queues, and the
settings changed are only those the benchmark's wire format needs:

- `sep="\\n"`: sse-starlette ends lines with `\\r\\n` by default; our server and the load client use `\\n`.
  The separator of a `ServerSentEvent` is its own, so the shared events are built with `sep="\\n"` too.
- `ping=0`: no keep-alive comments (default every 15 s), which would only add bytes to the count.
- `Cache-Control: no-cache` (sse-starlette's default is `no-store`), to send the same headers as ours.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import suppress

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _contract import (HEALTH_PATH, HOST, PUBLISH_PATH, SSE_PATH, build_events, connection_established,
                       parse_args)

QUEUE_SIZE = 10_000
# The benchmark publishes one event type to one project, so the query string is ignored and every
# subscriber gets every event.
subscribers: set[asyncio.Queue[ServerSentEvent | None]] = set()   # None ends the stream


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def publish(request: Request) -> Response:
    try:
        events = build_events(await request.body())
    except ValueError as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    for event in events:
        message = ServerSentEvent(event.text, id=event.id, sep="\n")
        for queue in subscribers:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                pass   # a subscriber 10,000 events behind misses this one; the benchmark counts it
    return JSONResponse({"accepted": len(events), "ids": [event.id for event in events]}, status_code=202)


async def stream() -> AsyncIterator[ServerSentEvent]:
    queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
    subscribers.add(queue)   # before the client can see connection_established and publish
    try:
        yield ServerSentEvent(connection_established(), event="connection_established", sep="\n")
        while (message := await queue.get()) is not None:
            yield message
    finally:
        subscribers.discard(queue)   # ended, or the client went away and sse-starlette cancelled us


async def events(request: Request) -> Response:
    return EventSourceResponse(stream(), sep="\n", ping=0, headers={"Cache-Control": "no-cache"})


class Server(uvicorn.Server):
    """On SIGTERM uvicorn waits for open responses to finish. sse-starlette would cancel its streams
    (uvicorn then logs "ASGI callable returned without completing response" for each), so its automatic
    drain is off and every stream is ended here instead, with its last chunk."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for queue in subscribers:
            with suppress(asyncio.QueueFull):   # one 10,000 events behind: timeout_graceful_shutdown
                queue.put_nowait(None)
        await super().shutdown(sockets)


app = Starlette(routes=[Route(HEALTH_PATH, health), Route(PUBLISH_PATH, publish, methods=["POST"]),
                        Route(SSE_PATH, events)])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # uvicorn handles SIGTERM with a graceful shutdown, then raises the signal again so that the default
    # action ends the process with -SIGTERM. A handler of our own, which uvicorn restores before raising
    # it, turns that into a normal exit with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    AppStatus.disable_automatic_graceful_drain()
    Server(uvicorn.Config(app, host=HOST, port=args.port, log_level="warning", lifespan="off",
                          timeout_graceful_shutdown=5)).run()


if __name__ == "__main__":
    main()
