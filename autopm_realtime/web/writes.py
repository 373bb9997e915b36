"""Writing pre-built frames to a Tornado stream at the lowest cost per connection.

On a fan-out every connection gets one write per loop turn, so the cost of one write is the cost of a
delivery. `IOStream.write` copies the bytes into its buffer, makes a future and then sends; when the
stream has nothing buffered (the usual case: the client keeps up) the same send can be made directly and
the future skipped. Only what the kernel does not take goes through the stream, which keeps order (it is
then the only writer until its buffer drains) and reports completion for the hub's queue bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.iostream import IOStream, StreamClosedError


def write_frames(stream: IOStream, data: bytes) -> asyncio.Future[Any] | None:
    """Send `data`. None when the kernel took all of it at once or the stream is closed; otherwise the
    stream's future for the remainder."""
    if stream.closed():
        return None
    # Only a plain TCP stream: an SSLIOStream's socket would take the bytes unencrypted.
    if type(stream) is IOStream and not stream.writing():
        try:
            sent = stream.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0   # let the stream meet the error again and close itself the usual way
        if sent == len(data):
            return None
        data = memoryview(data)[sent:]
    try:
        return stream.write(data)
    except StreamClosedError:
        return None
