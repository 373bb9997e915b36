"""The wire contract shared by the peer servers, so that all four build events identically.

Not a peer itself. It holds what the fan-out load client expects of any server, whatever the library:
the paths, the command line, the control messages and, above all, the event envelope
`{"type","id","project_id","timestamp","data"}`, encoded once per event as compact JSON. Keeping this
in one place means the peers differ only in how they hold connections and fan an event out, which is
what the benchmark compares. Pure standard library: importing it costs a peer no extra memory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import signal
from datetime import datetime, timezone
from typing import Any, NamedTuple

HOST = "127.0.0.1"
HEALTH_PATH = "/api/v1/health"
PUBLISH_PATH = "/api/v1/events"
WS_PATH = "/api/v1/dashboard/ws"
SSE_PATH = "/api/v1/sse/events"
HEALTH_BODY = '{"status":"ok"}'

EPOCH = secrets.token_hex(4)          # ids are "<epoch>-<seq>", like the real server's
_sequence = itertools.count(1)
_connections = itertools.count(1)


class Event(NamedTuple):
    id: str
    text: str   # the whole envelope as compact JSON, encoded once for every subscriber


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def utc_now_iso() -> str:
    """UTC with milliseconds and a `Z`, e.g. 2026-11-26T06:00:00.123Z."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def build_events(body: bytes) -> list[Event]:
    """The events of one `POST /api/v1/events` body (one object or a list); ValueError if malformed."""
    try:
        parsed = json.loads(body)
    except ValueError:
        raise ValueError("body is not valid JSON") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise ValueError("no events to publish")
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("type"), str)
                and isinstance(item.get("project_id"), str) and isinstance(item.get("data"), dict)):
            raise ValueError("an event is an object with type (str), project_id (str) and data (object)")
    events = []
    for item in items:
        event_id = f"{EPOCH}-{next(_sequence)}"
        project_id, timestamp = item["project_id"], utc_now_iso()
        # json.loads keeps the key order of `data`, so "bench_seq":N,"sent_ns":N stay adjacent.
        envelope = {"type": item["type"], "id": event_id, "project_id": project_id, "timestamp": timestamp,
                    "data": {**item["data"], "project_id": project_id, "timestamp": timestamp}}
        events.append(Event(event_id, dumps(envelope)))
    return events


def accepted(events: list[Event]) -> str:
    return dumps({"accepted": len(events), "ids": [event.id for event in events]})


def connection_established() -> str:
    return dumps({"type": "connection_established", "connection_id": f"{EPOCH}-c{next(_connections)}",
                  "timestamp": utc_now_iso()})


def subscription_confirmed(request: dict[str, Any]) -> str:
    return dumps({"type": "subscription_confirmed", "event_types": request.get("event_types") or [],
                  "project_id": request.get("project_id")})


def parse_args(description: str, publish_port: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    if publish_port:
        parser.add_argument("--publish-port", type=int, required=True)
    return parser.parse_args()


async def until_terminated() -> None:
    """Return on SIGTERM or SIGINT, so that the caller shuts down and exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
