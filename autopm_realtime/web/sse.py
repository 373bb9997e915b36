"""The Server-Sent Events protocol: `/api/v1/sse/events`.

Project events are `id:` + `data:` with no `event:` line, so `EventSource.onmessage` receives them; control
messages (`connection_established`, `heartbeat`, `reset`) are named events, invisible to `onmessage`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..events import Event, sse_frame, utc_now_iso
from ..connection import Connection
from .access import Admission
from .base import ApiError, JsonHandler
from .writes import write_frames
from .websocket import MAX_EVENT_ID_LENGTH, PROTOCOL_VERSION


class EventStreamHandler(JsonHandler):
    """One long GET per subscriber; it is the hub's `Transport` for its own connection."""

    name = "sse"
    connection: Connection | None = None

    admission: Admission | None = None

    async def get(self) -> None:
        """The stream. A HEAD is checked as a GET is and gets the stream's headers, but takes no place
        under the connection limits and opens no connection."""
        event_filter = self.scoped_filter_from_query()
        last_event_id = self._last_event_id()
        if self.request.method == "HEAD":
            await self._send_headers()
            return
        admission = Admission.admit(self.service, self.request.remote_ip or "", self.claims, self._end)
        if isinstance(admission, str):
            raise ApiError(503, admission, headers={"Retry-After": "5"})
        self.admission = admission   # the stream ends when the token expires
        stream = self.request.connection.stream
        stream.set_nodelay(True)   # writes are coalesced already; see websocket.py
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # From now on the hub writes body bytes straight to the stream (see `send`). Tornado chunks an
        # HTTP/1.1 response without a length; 1.0 gets raw bytes.
        self._chunked = self.request.version == "HTTP/1.1"
        await self._send_headers()
        hub = self.service.hub
        connection = self.connection = hub.connect(self, event_filter)
        connection.enqueue(f"retry: {self.service.settings.sse_retry_ms}\n\n".encode())
        connection.send_control(
            "connection_established", connection_id=connection.id, timestamp=utc_now_iso(),
            heartbeat_interval=hub.heartbeat_seconds, available_event_types=self.service.registry.names,
            protocol_version=PROTOCOL_VERSION, event_types=event_filter.describe_types(
                self.service.registry.names), project_id=event_filter.project_id)

        def confirm(recovered: bool, replayed: int) -> None:
            if not recovered:
                connection.send_control("reset", reason="the last event id is unknown, older than the "
                                        "history kept, or history cannot be read right now; resuming "
                                        "with live events only",
                                        last_event_id=last_event_id)

        await hub.subscribe(connection, event_filter, last_event_id, confirm)
        await self._ended

    async def _send_headers(self) -> None:
        """The stream's headers, sent now through tornado. A stream has no length: sent before `finish`,
        they get no `Content-Length` (on a HEAD, tornado would count the empty body as 0)."""
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        await self.flush()

    def _last_event_id(self) -> str | None:
        """The `Last-Event-ID` header (sent by a reconnecting EventSource) wins over the query."""
        event_id = self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", "")
        if len(event_id) > MAX_EVENT_ID_LENGTH:
            raise ApiError(400, f"last event id is longer than {MAX_EVENT_ID_LENGTH} characters")
        return event_id or None

    def on_connection_close(self) -> None:
        self._end()

    def on_finish(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.connection is not None:
            self.service.hub.disconnect(self.connection)
        if self.admission is not None:
            self.admission.end()
        ended = getattr(self, "_ended", None)
        if ended is not None and not ended.done():
            ended.set_result(None)

    # --- Transport -------------------------------------------------------------------------------

    def event_frame(self, event: Event) -> bytes:
        return event.sse_frame

    def control_frame(self, kind: str, payload: bytes) -> bytes:
        return sse_frame(payload, name=kind)

    def send(self, data: bytes) -> Any:
        """Straight to the IOStream, so the hub learns when the kernel has taken the bytes (its queue
        bound relies on that); tornado's `finish` still writes the last chunk after these."""
        if self._finished:
            return None
        if self._chunked:
            data = b"%x\r\n" % len(data) + data + b"\r\n"
        return write_frames(self.request.connection.stream, data)

    def close_connection(self, code: int, reason: str) -> None:
        """The stream ends; the browser's EventSource reconnects with `Last-Event-ID` by itself."""
        self._end()
