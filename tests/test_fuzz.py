"""Fuzzing the two inputs a stranger controls, against a live in-process server: WebSocket client frames
and publish bodies. Each generated input is checked against a reference model written from
docs/protocol.md (not from the server's code): the exact reply or status it should get, that nothing else
arrives, that the connection survives (or closes with the documented 1009), and that the history holds
exactly the accepted events. Then every connection is gone from the stats and from the hub.

Hypothesis runs inside plain (sync) tests, one `io_loop.run_sync` per example, so the server, its
connections and the published history carry over from example to example, as they would in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings as hypothesis_settings, strategies as st
from tornado.httpclient import AsyncHTTPClient

from support import WsClient, publish, with_settings

LIMIT = 16 * 1024               # --max-message-bytes of the WebSocket server under test
MAX_PUBLISH_BYTES = 16 * 1024   # small limits, so that the fuzz reaches them
MAX_PUBLISH_EVENTS = 20
MAX_EVENT_BYTES = 2048
EXTRA_TYPE = "deploy:environment,version"
TYPES = ("file_change", "auto_commit", "progress_update", "risk_alert", "deploy")
CONTROL_NAMES = ("connection_established", "subscription_confirmed", "unsubscription_confirmed", "pong",
                 "heartbeat", "error", "reset")
ERROR_CODES = {"invalid_json", "invalid_message", "unknown_message_type", "invalid_event_type"}
MAX_DEPTH = 64
SERVER_TIMESTAMP = "2026-11-26T04:20:53.309Z"   # the shape (and length) of every server timestamp
LONGEST_ID = "0" * 48

GENEROUS_RATES = dict(ws_message_rate=1e6, ws_message_burst=1_000_000, publish_rate=1e6,
                      publish_burst=1_000_000)
# a failing example's report may repr a large input (a frame near the size limit)
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
FUZZ_SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                     print_blob=True)


# --- the reference model, from docs/protocol.md ------------------------------------------------

class Invalid(Exception):
    """The reference says: this error code."""

    def __init__(self, outcome: Any) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def strict_json(text: str | bytes) -> Any:
    """Docs §3.4 / §6: no NaN or Infinity, no number too large for a float, no lone surrogate, at most 64
    levels of nesting."""
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    def finite_float(literal: str) -> float:
        number = float(literal)
        if not math.isfinite(number):
            raise ValueError(literal)
        return number

    def float_sized_int(literal: str) -> int:
        number = int(literal)
        float(number)   # OverflowError (an ArithmeticError) beyond float range
        return number

    try:
        value = json.loads(text, parse_constant=refuse, parse_float=finite_float,
                           parse_int=float_sized_int)
    except (RecursionError, OverflowError):
        raise ValueError("too deep or too large") from None
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            item.encode("utf-8")   # UnicodeEncodeError (a ValueError) for a lone surrogate
        elif isinstance(item, (list, dict)):
            if depth + 1 > MAX_DEPTH:
                raise ValueError("nested too deeply")
            if isinstance(item, dict):
                pending.extend((key, depth + 1) for key in item)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
    return value


PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")   # docs §1, "Project ids"


def project_id_ok(value: Any) -> bool:
    """The documented project id (a final newline included: it is not one)."""
    return isinstance(value, str) and PROJECT_ID.fullmatch(value) is not None


def reference_ws_reply(payload: str, subscribed: frozenset[str]) -> tuple[str, Any]:
    """What one text frame must get: ("close", 1009), ("error", code), ("pong", id),
    ("subscription_confirmed", (types, project_id, last_event_id)) or ("unsubscription_confirmed", types)."""
    if len(payload.encode("utf-8")) > LIMIT:
        return "close", 1009
    try:
        message = strict_json(payload)
    except ValueError:
        return "error", "invalid_json"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "error", "invalid_message"

    def event_types() -> frozenset[str] | None:
        names = message.get("event_types")
        if names is None:
            return None
        if not isinstance(names, list):
            raise Invalid("invalid_message")
        if any(not isinstance(name, str) or name not in TYPES for name in names):
            raise Invalid("invalid_event_type")
        return frozenset(names) or None

    kind = message["type"]
    try:
        if kind == "ping":
            return "pong", message.get("id")
        if kind == "subscribe":
            types = event_types()
            project_id = message.get("project_id")
            if project_id is not None and not project_id_ok(project_id):
                raise Invalid("invalid_message")
            last_event_id = message.get("last_event_id")
            if last_event_id is not None and not (isinstance(last_event_id, str)
                                                  and 1 <= len(last_event_id) <= 128):
                raise Invalid("invalid_message")
            return "subscription_confirmed", (types, project_id, last_event_id)
        if kind == "unsubscribe":
            if message.get("event_types") == []:
                return "unsubscription_confirmed", subscribed
            removed = event_types()
            return "unsubscription_confirmed", frozenset() if removed is None else subscribed - removed
        return "error", "unknown_message_type"
    except Invalid as invalid:
        return "error", invalid.outcome


def in_order(types: frozenset[str] | None) -> list[str]:
    return [name for name in TYPES if types is None or name in types]


CHANGE_TYPES = ("created", "modified", "deleted", "moved")
COMMIT_EVENTS = ("start", "result", "error")
TRIGGERS = ("quiet_period", "schedule", "manual")
SEVERITIES = ("low", "medium", "high", "critical")


def _number(value: Any, low: float = 0, high: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def data_ok(kind: str, data: dict[str, Any]) -> bool:
    """Docs §2: required fields, each known field's domain, the cross-field rules."""
    optional = {"project_id": _text, "timestamp": _iso}
    if kind == "file_change":
        required = {"file_path": _text, "change_type": lambda v: v in CHANGE_TYPES}
        optional["old_path"] = _text
    elif kind == "auto_commit":
        required = {"event": lambda v: v in COMMIT_EVENTS, "changes_count": _whole}
        optional.update(success=lambda v: isinstance(v, bool), trigger=lambda v: v in TRIGGERS,
                        sha=lambda v: isinstance(v, str), ref=lambda v: isinstance(v, str),
                        reason=lambda v: isinstance(v, str), duration_ms=_number)
    elif kind == "progress_update":
        required = {"progress_percentage": lambda v: _number(v, 0, 100), "completed_tasks": _whole,
                    "total_tasks": _whole}
    elif kind == "risk_alert":
        required = {"severity": lambda v: v in SEVERITIES, "message": _text}
    else:   # deploy:environment,version
        required = {"environment": lambda v: v is not None, "version": lambda v: v is not None}
    if any(name not in data for name in required):
        return False
    if not all(check(data[name]) for checks in (required, optional)
               for name, check in checks.items() if name in data):
        return False
    if kind == "file_change":
        return "old_path" not in data or data["change_type"] == "moved"
    if kind == "auto_commit":
        if data["event"] in ("result", "error") and "success" not in data:
            return False
        return data["event"] != "error" or data.get("success") is False
    if kind == "progress_update":
        return data["completed_tasks"] <= data["total_tasks"]
    return True


def encoded_size(envelope: dict[str, Any]) -> int:
    return len(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def reference_event(item: Any) -> int:
    """One published object: 202, 400 or 413 (docs §2, §5.2, limits)."""
    if not isinstance(item, dict) or set(item) - {"type", "project_id", "data"}:
        return 400
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        return 400
    data = item.get("data", {})
    if not isinstance(data, dict):
        return 400
    top, inner = item.get("project_id"), data.get("project_id")
    if (top is None and inner is None) or (top is not None and inner is not None and top != inner):
        return 400
    project_id = top if top is not None else inner
    if not project_id_ok(project_id):
        return 400
    filled = {**data, "project_id": project_id}
    filled.setdefault("timestamp", SERVER_TIMESTAMP)
    if not data_ok(kind, filled):
        return 400
    size = encoded_size({"type": kind, "id": LONGEST_ID, "project_id": project_id,
                         "timestamp": SERVER_TIMESTAMP, "data": filled})
    return 413 if size > MAX_EVENT_BYTES else 202


def reference_publish(body: bytes, content_type: str) -> tuple[int, int | None]:
    """(status, index of the refused event in an array publish)."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return 415, None
    if len(body) > MAX_PUBLISH_BYTES:
        return 413, None
    try:
        value = strict_json(body)
    except ValueError:
        return 400, None
    items = value if isinstance(value, list) else [value]
    if not items:
        return 400, None
    if len(items) > MAX_PUBLISH_EVENTS:
        return 413, None
    for index, item in enumerate(items):
        status = reference_event(item)
        if status != 202:
            return status, index if isinstance(value, list) else None
    return 202, None


# --- strategies --------------------------------------------------------------------------------

INT_BOUND = 10 ** 400
texts = st.text(max_size=12)
# lone surrogates, which JSON can carry as escapes but UTF-8 cannot: invalid
surrogate_texts = st.text(st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=4)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-INT_BOUND, INT_BOUND),
                    st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(texts, children, max_size=4), max_leaves=12)
good_project_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
project_ids = st.one_of(
    st.sampled_from(["my-project", "other", "", "-x", "a b", "a" * 128, "a" * 129, "abc\n", "ab\nc"]),
    good_project_ids,
    st.builds(lambda good, extra, front: extra + good if front else good + extra,   # almost valid
              good_project_ids, st.sampled_from(["\n", "\r", " ", "\t", "\x00", "\u00e9", "/", "\n\n"]),
              st.booleans()),
    texts, json_values)
timestamps = st.one_of(st.datetimes().map(datetime.isoformat),
                       st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"),
                       st.dates().map(lambda d: d.isoformat()),
                       st.sampled_from(["2024-01-15T12:30:00+02:00", "2024-13-01", "yesterday", ""]),
                       texts, json_values)


def encode(value: Any, style: str) -> str:
    """JSON text for a value; non-ASCII is escaped when it cannot travel as UTF-8 (lone surrogates)."""
    ascii_only = style == "ascii"
    if not ascii_only:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            ascii_only = True
    if style == "spaced":
        return json.dumps(value, ensure_ascii=ascii_only, indent=1)
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":") if style == "compact" else None)


styles = st.sampled_from(["compact", "ascii", "spaced", "default"])


@st.composite
def mutated(draw: st.DrawFn, text: st.SearchStrategy[str]) -> str:
    """Valid JSON text, truncated or with one character inserted or removed."""
    original = draw(text)
    at = draw(st.integers(0, len(original)))
    how = draw(st.sampled_from(["cut", "insert", "drop"]))
    if how == "cut":
        return original[:at]
    if how == "insert":
        return original[:at] + draw(st.sampled_from(list('{}[]",:\\ 0aé') + ["\x00"])) + original[at:]
    return original[:at] + original[at + 1:]


def tricky_values() -> list[str]:
    """Hand-picked edges of the strict parser, as JSON value texts."""
    values = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "-0", "0.0e-400", "1E+2",
              "9" * 5000, '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\ud800\\ud800"',
              *("[" * depth + "]" * depth for depth in range(MAX_DEPTH - 3, MAX_DEPTH + 1)),
              *('{"a":' * depth + "1" + "}" * depth for depth in range(MAX_DEPTH - 3, MAX_DEPTH + 1)),
              "[" * 8_000 + "]" * 8_000, "1" + "0" * 400, "-1" + "0" * 400]
    return values


WHOLE_TRICKS = ["\ufeff{\"type\":\"ping\"}", '{"type":"ping"} x', '{"type":"ping"}  \n ',
                '{"type":"ping","type":"hello"}', '{"type":"hello","type":"ping","id":2}', "", " ", "null",
                "0", '"ping"', "[]", "{}", '{"type":null}', '{"type":["ping"]}', '{"TYPE":"ping"}', "\x00",
                '{"type":"ping",}', "{'type':'ping'}", '{"type":"ping"}{"type":"ping"}']


@dataclass(frozen=True)
class Frame:
    payload: str | bytes

    @property
    def binary(self) -> bool:
        return isinstance(self.payload, bytes)

    def __repr__(self) -> str:   # shrunk examples can be large: show the start and the size
        text = repr(self.payload)
        return f"Frame({text[:300]}{'...' if len(text) > 300 else ''}, {len(self.payload)} long)"


@st.composite
def near_limit(draw: st.DrawFn, head: str) -> str:
    """A ping padded to within a few bytes of the limit, with 1-, 2- or 3-byte characters."""
    size = LIMIT + draw(st.integers(-3, 3))
    fill = draw(st.sampled_from(["x", "é", "€"]))
    frame_head, tail = head + '"id":"near","pad":"', '"}'
    room = size - len((frame_head + tail).encode())
    wide = room // len(fill.encode()) if draw(st.booleans()) else 0
    padding = fill * wide + "x" * (room - wide * len(fill.encode()))
    return frame_head + padding + tail


def ws_frames(epoch: str, ids: list[str]) -> st.SearchStrategy[Frame]:
    digits = st.characters(categories=["Nd", "No"])
    suffixes = ["\u00b2", "\u2460", "3\u00b2", "3", "03", "+3", "-3", " 3", "3\n", "3_0", "\u0663",
                "\uff13", "1" * 30]
    near_ids = st.one_of(   # ids of this server's epoch that it never issued
        st.sampled_from([f"{epoch}-0", f"{epoch}-999999", f"{epoch}-01", f"{epoch}-", f"{epoch}--1"]),
        st.text(digits | st.sampled_from("-+ 0"), min_size=1, max_size=6).map(lambda s: f"{epoch}-{s}"),
        st.sampled_from(suffixes).map(lambda s: f"{epoch}-{s}"),
        st.sampled_from(suffixes).map(lambda s: f"{epoch}-{s}"))
    last_ids = st.one_of(
        st.sampled_from(ids), near_ids,
        st.sampled_from(["", "x" * 128, "x" * 129, f"0badc0de-{ids[0].partition('-')[2]}"]), texts, json_values)
    type_lists = st.one_of(
        st.lists(st.sampled_from(TYPES), max_size=6),
        st.lists(st.sampled_from(TYPES) | st.sampled_from(["nope", "File_change", "heartbeat", ""]) | texts
                 | json_values, max_size=4),
        st.integers(500, 1500).map(lambda n: [TYPES[i % len(TYPES)] for i in range(n)]),
        json_values)
    message_types = st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping"]),
                              st.sampled_from(["subscribe", "unsubscribe", "ping"]),
                              st.sampled_from(TYPES + CONTROL_NAMES + ("Ping", "ping ", "")), texts,
                              json_values)
    valid_types = st.lists(st.sampled_from(TYPES), max_size=6)
    valid_projects = st.sampled_from(["my-project", "other", "nobody"])
    fields = {"event_types": st.one_of(valid_types, valid_types, type_lists),
              "project_id": st.one_of(st.none(), valid_projects, valid_projects, project_ids),
              "last_event_id": st.one_of(st.none(), st.sampled_from(ids), st.sampled_from(ids), last_ids),
              "id": json_values}
    extras = st.dictionaries(texts, json_values, max_size=2)
    messages = st.one_of(
        *[st.tuples(extras, st.fixed_dictionaries({"type": st.just(kind)}, optional=fields))
          for kind in ("subscribe", "unsubscribe", "ping")],
        st.tuples(extras, st.fixed_dictionaries({"type": st.just("subscribe"), "last_event_id": near_ids},
                                                optional={"event_types": valid_types,
                                                          "project_id": valid_projects})),
        st.tuples(extras, st.fixed_dictionaries({"type": message_types}, optional=fields)),
        st.tuples(extras, st.fixed_dictionaries({}, optional=fields)),
    ).map(lambda pair: {**pair[0], **pair[1]})
    structured = st.builds(encode, messages, styles)
    head = '{"type":"ping",'
    return st.one_of(
        structured.map(Frame), structured.map(Frame), structured.map(Frame), structured.map(Frame),
        st.builds(encode, json_values, styles).map(Frame),
        st.builds(encode, st.fixed_dictionaries({"type": message_types}), styles).map(Frame),
        st.builds(encode, st.fixed_dictionaries({"type": st.just("subscribe"), "last_event_id": st.sampled_from(
            suffixes).map(lambda s: f"{epoch}-{s}")}), styles).map(Frame),
        st.builds(encode, st.fixed_dictionaries({"type": st.just("ping"), "id": surrogate_texts}),
                  styles).map(Frame),
        st.text(max_size=40).map(Frame),
        mutated(structured).map(Frame),
        st.sampled_from(tricky_values()).map(lambda v: Frame(head + '"id":' + v + "}")),
        st.sampled_from(WHOLE_TRICKS).map(Frame),
        st.binary(max_size=64).map(Frame),
        near_limit(head).map(Frame),
    )


# --- WebSocket -------------------------------------------------------------------------------

SEED_EVENTS = [
    {"type": "file_change", "project_id": "my-project", "data": {"file_path": "a.py", "change_type": "created"}},
    {"type": "risk_alert", "project_id": "other", "data": {"severity": "low", "message": "m"}},
    {"type": "progress_update", "project_id": "my-project",
     "data": {"progress_percentage": 10, "completed_tasks": 1, "total_tasks": 10}},
    {"type": "deploy", "project_id": "my-project", "data": {"environment": "prod", "version": "1"}},
    {"type": "auto_commit", "project_id": "other", "data": {"event": "start", "changes_count": 0}},
    {"type": "file_change", "project_id": "other", "data": {"file_path": "b.py", "change_type": "deleted"}},
]


def must_cover_frames(epoch: str, some_id: str) -> list[Frame]:
    """Tried first on every run, whatever the random ones turn out to be: each kind of reply, the
    size limit either side, and a resume that replays."""
    frames = [
        '{"type":"ping","id":{"nested":[1,2.5,null,true]}}', '{"type":"ping"}',
        json.dumps({"type": "subscribe", "event_types": ["risk_alert", "file_change"],
                    "last_event_id": some_id}),
        '{"type":"subscribe","project_id":"my-project","last_event_id":"%s"}' % some_id,
        '{"type":"unsubscribe","event_types":["file_change"]}', '{"type":"unsubscribe","event_types":[]}',
        '{"type":"unsubscribe"}', '{"type":"subscribe","event_types":["file_change","nope"]}',
        '{"type":"subscribe","project_id":"my-project\\n"}', '{"type":"subscribe","last_event_id":""}',
        '{"type":"hello"}', "{not json", '{"type":"ping","id":NaN}', "[1,2]",
        *('{"type":"ping","pad":"%s"}' % ("x" * (size - 24)) for size in (LIMIT, LIMIT + 1)),
        json.dumps({"type": "subscribe", "last_event_id": f"{epoch}-\u00b2"}),
        '{"type":"ping","id":1%s}' % ("0" * 400),
    ]
    return [Frame(text) for text in frames] + [Frame(b"\x01\x02")]


class WsFuzzer:
    """One WebSocket at a time (a new one after each documented 1009 close) and the reference's view of
    its subscription."""

    def __init__(self, port: int, epoch: str, published: list[dict[str, Any]]) -> None:
        self.port = port
        self.epoch = epoch
        self.published = published     # the seed events as the history API returned them
        self.ws: WsClient | None = None
        self.subscribed: frozenset[str] = frozenset()   # a new socket receives nothing
        self.probes = 0
        self.counts: dict[str, int] = {}

    async def client(self) -> WsClient:
        if self.ws is None:
            self.ws, _ = await WsClient.connected(self.port)
            self.subscribed = frozenset()
        return self.ws

    async def exchange(self, frame: Frame) -> None:
        try:
            await self._exchange(frame)
        except BaseException:
            if self.ws is not None:   # the next example starts on a new socket
                self.ws.close()
                self.ws = None
            raise

    async def _exchange(self, frame: Frame) -> None:
        ws = await self.client()
        await ws.connection.write_message(frame.payload, binary=frame.binary)
        if frame.binary:
            expected = ("error", "invalid_message")
        else:
            expected = reference_ws_reply(frame.payload, self.subscribed)
        kind, detail = expected
        self.counts[kind if kind != "error" else detail] = self.counts.get(
            kind if kind != "error" else detail, 0) + 1
        if kind == "close":
            code, reason = await ws.closed()
            assert (code, reason) == (1009, "message too big"), f"{frame!r}: closed with {code} {reason!r}"
            self.ws = None
            return
        self.probes += 1
        probe = f"probe-{self.probes}"
        await ws.send({"type": "ping", "id": probe})
        replies = []
        while True:
            raw = await ws.receive_raw()
            assert raw is not None, (f"{frame!r}: the server dropped the connection "
                                     f"({ws.connection.close_code} {ws.connection.close_reason!r}); "
                                     f"expected {expected}")
            message = json.loads(raw)
            if message.get("type") == "heartbeat":
                continue
            if message.get("type") == "pong" and message.get("id") == probe:
                break
            replies.append(message)
        self.check(frame, expected, replies)

    def check(self, frame: Frame, expected: tuple[str, Any], replies: list[dict[str, Any]]) -> None:
        kind, detail = expected
        assert replies, f"{frame!r}: no reply (expected {expected})"
        reply, rest = replies[0], replies[1:]
        assert reply["type"] == kind, f"{frame!r}: got {reply}, expected {expected}"
        if kind == "error":
            assert reply["code"] == detail and isinstance(reply["message"], str) and reply["message"], \
                f"{frame!r}: got {reply}, expected {expected}"
            assert set(reply) == {"type", "code", "message"}, reply
            assert not rest, f"{frame!r}: more than one reply: {replies}"
        elif kind == "pong":
            assert reply["timestamp"].endswith("Z"), reply
            expected_reply = {"type": "pong", "timestamp": reply["timestamp"]}
            if detail is not None:
                expected_reply["id"] = detail
            assert reply == expected_reply, f"{frame!r}: got {reply}, expected {expected_reply}"
            assert not rest, f"{frame!r}: more than one reply: {replies}"
        elif kind == "unsubscription_confirmed":
            assert reply == {"type": kind, "event_types": in_order(detail)}, f"{frame!r}: {reply}"
            assert not rest, f"{frame!r}: more than one reply: {replies}"
            self.subscribed = detail
        else:
            types, project_id, last_event_id = detail
            assert set(reply) == {"type", "event_types", "project_id", "recovered", "replayed"}, reply
            assert reply["event_types"] == in_order(types), f"{frame!r}: {reply}"
            assert reply["project_id"] == project_id, f"{frame!r}: {reply}"
            self.subscribed = frozenset(in_order(types))
            self.check_replay(frame, reply, rest, types, project_id, last_event_id)

    def check_replay(self, frame: Frame, reply: dict[str, Any], events: list[dict[str, Any]],
                     types: frozenset[str] | None, project_id: str | None, last_event_id: str | None) -> None:
        assert isinstance(reply["recovered"], bool) and reply["replayed"] == len(events), \
            f"{frame!r}: {reply} then {len(events)} messages: {events[:3]}"
        assert all(set(e) == {"type", "id", "project_id", "timestamp", "data"} for e in events), events
        ids = [e["id"] for e in self.published]
        if last_event_id is None:
            assert (reply["recovered"], reply["replayed"]) == (True, 0), f"{frame!r}: {reply}"
        elif last_event_id in ids:
            after = self.published[ids.index(last_event_id) + 1:]
            wanted = [e for e in after if (types is None or e["type"] in types)
                      and project_id in (None, e["project_id"])]
            assert reply["recovered"] is True and events == wanted, f"{frame!r}: {reply}, {events}"
        elif not last_event_id.startswith(f"{self.epoch}-"):
            assert (reply["recovered"], reply["replayed"]) == (False, 0), f"{frame!r}: {reply}"
        else:   # "<epoch>-<something>" that the server never issued: recovered or not, a consistent replay
            assert reply["recovered"] or not events, f"{frame!r}: {reply}"
            assert [e for e in self.published if e in events] == events, f"{frame!r}: {events}"


async def ws_stats(port: int) -> dict[str, Any]:
    client = AsyncHTTPClient(force_instance=True)
    try:
        answer = await client.fetch(f"http://127.0.0.1:{port}/api/v1/dashboard/ws/stats")
    finally:
        client.close()
    return json.loads(answer.body)


async def connections_gone(port: int, service) -> None:
    """The stats, the hub and the connection limiter all say: no connection left (polled: a close is
    noticed by the server a moment after the client sends it)."""
    for _ in range(200):
        stats = await ws_stats(port)
        if stats["total_connections"] == 0:
            break
        await asyncio.sleep(0.025)
    assert stats["total_connections"] == 0 and stats["websocket_connections"] == 0, stats
    assert stats["message_queue_size"] == 0 and stats["message_queue_bytes"] == 0, stats
    counters = stats["counters"]
    assert counters["connections_opened"] == counters["connections_closed"], counters
    assert service.hub.connections() == []
    assert service.connection_limiter.total == 0 and len(service.connection_limiter) == 0


@with_settings(max_message_bytes=LIMIT, event_types=(EXTRA_TYPE,), **GENEROUS_RATES)
def test_websocket_frames_get_exactly_the_documented_reply(service, port, http, io_loop, caplog):
    """Arbitrary frames: each gets the reply the reference expects (and nothing else), the connection
    survives all but over-size frames (1009), and a ping is answered after every frame."""
    async def seed() -> tuple[str, list[dict[str, Any]]]:
        for event in SEED_EVENTS:
            assert (await publish(http, port, event)).code == 202
        answer = await http.fetch(f"http://127.0.0.1:{port}/api/v1/events?limit=1000")
        return service.broker.epoch, json.loads(answer.body)["events"]

    epoch, published = io_loop.run_sync(seed)
    assert len(published) == len(SEED_EVENTS)
    fuzzer = WsFuzzer(port, epoch, published)

    @hypothesis_settings(max_examples=300, **FUZZ_SETTINGS)
    @given(frame=ws_frames(epoch, [e["id"] for e in published]))
    def one_frame(frame: Frame) -> None:
        io_loop.run_sync(lambda: fuzzer.exchange(frame), timeout=15)

    for frame in must_cover_frames(epoch, published[2]["id"]):
        one_frame = example(frame=frame)(one_frame)
    one_frame()
    # every kind of reply was checked (the explicit examples make sure of it), the documented close too
    assert set(fuzzer.counts) >= {"close", "pong", "subscription_confirmed", "unsubscription_confirmed",
                                   *ERROR_CODES}, fuzzer.counts
    if fuzzer.ws is not None:
        fuzzer.ws.close()
    io_loop.run_sync(lambda: connections_gone(port, service), timeout=15)
    assert service.rate_stats.ws_messages_rejected == 0
    assert_no_errors_logged(caplog)


def assert_no_errors_logged(caplog) -> None:
    """An exception in a handler is logged at ERROR (tornado.application) even when the client only
    sees a dropped connection."""
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]


@with_settings(max_message_bytes=LIMIT)
async def test_a_text_frame_that_is_not_utf8_drops_only_that_connection(port, service):
    """Not reachable from a browser (it cannot send such a frame): tornado aborts the connection without
    a close frame. Whatever the close, the server forgets the connection and serves the others."""
    bystander, _ = await WsClient.connected(port)
    ws, _ = await WsClient.connected(port)
    await ws.connection.write_message(b'{"type":"ping","id":"\xff"}', binary=False)
    assert await ws.receive_raw() is None
    await bystander.send({"type": "ping", "id": 1})
    assert (await bystander.receive_type("pong"))["id"] == 1
    bystander.close()
    await connections_gone(port, service)


# --- publish ---------------------------------------------------------------------------------

def event_data(kind: str, wrong: bool) -> st.SearchStrategy[dict[str, Any]]:
    """`data` for a type: every field valid, or (`wrong`) each field sometimes anything at all."""
    def field(*valid: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(*valid, *valid, *valid, json_values) if wrong else st.one_of(*valid)

    text = field(st.text(min_size=1, max_size=10))
    common = {"project_id": field(st.just("my-project")) if wrong else st.just("my-project"),
              "timestamp": field(timestamps) if wrong else st.datetimes().map(datetime.isoformat)}
    counts = st.integers(0, 50)
    if kind == "file_change":
        data = st.fixed_dictionaries({"file_path": text, "change_type": field(st.sampled_from(CHANGE_TYPES))},
                                     optional=common)
        if wrong:
            data = st.tuples(data, st.fixed_dictionaries({}, optional={"old_path": text})).map(
                lambda pair: {**pair[0], **pair[1]})
    elif kind == "auto_commit":
        data = st.fixed_dictionaries(
            {"event": field(st.just("start")) if not wrong else field(st.sampled_from(COMMIT_EVENTS)),
             "changes_count": field(st.integers(0, 10 ** 6))},
            optional={"success": field(st.booleans()), "trigger": field(st.sampled_from(TRIGGERS)),
                      "sha": field(st.text(max_size=40)), "ref": field(st.text(max_size=20)),
                      "reason": field(st.text(max_size=20)),
                      "duration_ms": field(st.floats(0, 1e9), st.integers(0, 10 ** 9)), **common})
    elif kind == "progress_update":
        data = st.fixed_dictionaries(
            {"progress_percentage": field(st.floats(0, 100), st.integers(0, 100)), "completed_tasks": field(counts),
             "total_tasks": field(counts)}, optional=common)
        if not wrong:
            data = data.map(lambda d: {**d, "total_tasks": d["completed_tasks"] + d["total_tasks"]})
    elif kind == "risk_alert":
        data = st.fixed_dictionaries({"severity": field(st.sampled_from(SEVERITIES)), "message": text},
                                     optional=common)
    else:
        anything = json_values if wrong else st.one_of(st.text(max_size=8), st.integers(), st.booleans())
        data = st.fixed_dictionaries({"environment": anything, "version": anything}, optional=common)
    passed_through = st.dictionaries(st.text(max_size=8).filter(lambda key: key not in ("project_id",
                                                                                        "timestamp")),
                                     json_values, max_size=2)
    return st.tuples(passed_through, data).map(lambda pair: {**pair[0], **pair[1]})


def valid_events() -> st.SearchStrategy[dict[str, Any]]:
    """Published objects the reference accepts (unless one is too large)."""
    return st.one_of(*(st.fixed_dictionaries({"type": st.just(kind), "project_id": st.just("my-project"),
                                              "data": event_data(kind, wrong=False)}) for kind in TYPES),
                     st.fixed_dictionaries({"type": st.sampled_from(["risk_alert"]),
                                            "data": st.just({"severity": "low", "message": "m",
                                                             "project_id": "elsewhere"})}))


def event_drafts() -> st.SearchStrategy[dict[str, Any]]:
    """Published objects with any field sometimes wrong, sometimes missing, sometimes extra."""
    def one(kind: str) -> st.SearchStrategy[dict[str, Any]]:
        data = event_data(kind, wrong=True)
        project = st.sampled_from(["my-project", "other"])
        return st.fixed_dictionaries(
            {"type": st.just(kind)},
            optional={"project_id": st.one_of(project, project, project, project_ids),
                      "data": st.one_of(data, data, data, json_values), "extra": json_values})

    return st.one_of(valid_events(), *(one(kind) for kind in TYPES),
                     st.fixed_dictionaries({}, optional={"type": st.sampled_from(CONTROL_NAMES) | texts
                                                         | json_values, "project_id": project_ids,
                                                         "data": json_values}),
                     json_values)


@st.composite
def sized_event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid risk_alert whose envelope is within a few bytes of --max-event-bytes."""
    event = {"type": "risk_alert", "project_id": "my-project",
             "data": {"severity": "low", "message": "m"}}
    target = MAX_EVENT_BYTES + draw(st.integers(-3, 3))
    base = reference_size(event)
    fill = draw(st.sampled_from(["x", "é"]))
    room = target - base + 1
    wide = room // len(fill.encode())
    event["data"]["message"] = fill * wide + "x" * (room - wide * len(fill.encode()))
    assert reference_size(event) == target
    return event


def reference_size(event: dict[str, Any]) -> int:
    data = {**event["data"], "project_id": event["project_id"], "timestamp": SERVER_TIMESTAMP}
    return encoded_size({"type": event["type"], "id": LONGEST_ID, "project_id": event["project_id"],
                         "timestamp": SERVER_TIMESTAMP, "data": data})


@st.composite
def sized_body(draw: st.DrawFn) -> bytes:
    """A valid publish padded with whitespace to within a few bytes of --max-publish-bytes."""
    text = json.dumps([{"type": "risk_alert", "project_id": "my-project",
                        "data": {"severity": "low", "message": "padded"}}])
    size = MAX_PUBLISH_BYTES + draw(st.integers(-2, 2))
    return (text + " " * (size - len(text))).encode()


@dataclass(frozen=True)
class Body:
    raw: bytes
    content_type: str = "application/json"

    def __repr__(self) -> str:
        text = repr(self.raw)
        return f"Body({text[:300]}{'...' if len(text) > 300 else ''}, {len(self.raw)} bytes, {self.content_type!r})"


def publish_bodies() -> st.SearchStrategy[Body]:
    drafts, valid = event_drafts(), valid_events()
    as_text = st.builds(encode, st.one_of(drafts, valid, valid, st.lists(drafts, max_size=4),
                                          st.lists(valid | sized_event(), max_size=MAX_PUBLISH_EVENTS + 3)),
                        styles)
    content_types = st.one_of(st.just("application/json"), st.sampled_from(["application/json; charset=utf-8", "Application/JSON",
                                               " application/json ;x=1", "text/plain", "",
                                               "application/jsonx", "application/x-www-form-urlencoded"]))
    head = '{"type":"risk_alert","project_id":"p","data":{"severity":"low","message":"m","x":'
    tricky = [head + value + "}}" for value in tricky_values()] + WHOLE_TRICKS
    return st.one_of(
        st.builds(lambda text, ct: Body(text.encode("utf-8"), ct), as_text, content_types),
        st.builds(lambda text: Body(text.encode("utf-8")), as_text),
        st.builds(lambda text: Body(text.encode("utf-8")), as_text),
        st.builds(lambda text: Body(text.encode("utf-8")), mutated(as_text)),
        st.builds(lambda text, ct: Body(text.encode("utf-8"), ct), as_text,
                  st.sampled_from(["text/plain", "", "application/jsonx", "application/x-www-form-urlencoded",
                                   "json", "application/json-patch+json"])),
        st.builds(lambda text: Body(text.encode("utf-8", "surrogatepass")),
                  surrogate_texts),
        st.builds(lambda text: Body(text.encode("utf-8", "surrogatepass")), st.sampled_from(tricky)),
        st.builds(Body, st.binary(max_size=64)),
        st.builds(lambda event: Body(json.dumps(event).encode()), sized_event()),
        st.builds(Body, sized_body()),
    )


def must_cover_bodies() -> list[Body]:
    """Tried first on every run: each status, each limit either side."""
    def event(message: str = "m", **data: Any) -> dict[str, Any]:
        return {"type": "risk_alert", "project_id": "my-project",
                "data": {"severity": "low", "message": message, **data}}

    base = reference_size(event(""))
    bodies = [json.dumps(event()), json.dumps([event()] * MAX_PUBLISH_EVENTS),
              json.dumps([event()] * (MAX_PUBLISH_EVENTS + 1)), json.dumps([event(), {"type": "nope"}]),
              json.dumps(event("x" * (MAX_EVENT_BYTES - base))), json.dumps(event("x" * (MAX_EVENT_BYTES - base + 1))),
              json.dumps({"type": "deploy", "project_id": "p", "data": {"environment": 0, "version": None}}),
              json.dumps(event(timestamp="2024-01-15")), json.dumps(event(project_id="other")), "[]", "{",
              json.dumps({**event(), "project_id": "my-project\n"}),
              '{"type":"progress_update","project_id":"p","data":{"progress_percentage":1%s,'
              '"completed_tasks":1,"total_tasks":2}}' % ("0" * 400)]
    padded = json.dumps([event()])
    return ([Body(text.encode()) for text in bodies]
            + [Body((padded + " " * (MAX_PUBLISH_BYTES + extra - len(padded))).encode()) for extra in (0, 1)]
            + [Body(b"\xff\xfe"), Body(json.dumps(event()).encode(), "text/plain")])


class PublishFuzzer:
    def __init__(self, port: int, http: AsyncHTTPClient) -> None:
        self.port = port
        self.http = http
        self.accepted: list[tuple[str, dict[str, Any]]] = []   # (id, the event as published)
        self.statuses: dict[int, int] = {}

    async def post(self, body: Body) -> None:
        answer = await publish(self.http, self.port, body.raw, headers={"Content-Type": body.content_type})
        self.statuses[answer.code] = self.statuses.get(answer.code, 0) + 1
        assert answer.code in (202, 400, 413, 415), f"{body!r}: {answer.code} {answer.body[:500]!r}"
        reply = json.loads(answer.body)
        expected = reference_publish(body.raw, body.content_type)
        if answer.code == 202:
            assert expected == (202, None), f"{body!r}: accepted ({reply}); expected {expected}"
            value = json.loads(body.raw)
            items = value if isinstance(value, list) else [value]
            assert len(reply["ids"]) == len(items) and len(set(reply["ids"])) == len(items), reply
            assert set(reply) == ({"ids"} if isinstance(value, list) else {"ids", "id"}), reply
            if not isinstance(value, list):
                assert reply["id"] == reply["ids"][0]
            self.accepted.extend(zip(reply["ids"], items))
            return
        error = reply["error"]
        assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
        assert error["status"] == answer.code and isinstance(error["reason"], str) and error["reason"], reply
        assert (answer.code, error.get("index")) == expected, \
            f"{body!r}: {answer.code} {reply}; expected status and index {expected}"
        assert set(error) <= {"status", "reason", "index"}, error

    async def history(self) -> list[dict[str, Any]]:
        """Every event after the first accepted one, page by page, oldest first."""
        events, since = [], self.accepted[0][0]
        while True:
            answer = await self.http.fetch(
                f"http://127.0.0.1:{self.port}/api/v1/events?limit=1000&since={since}")
            page = json.loads(answer.body)
            assert page["recovered"] is True, page
            if not page["events"]:
                return events
            events.extend(page["events"])
            since = page["last_event_id"]


@with_settings(max_publish_bytes=MAX_PUBLISH_BYTES, max_publish_events=MAX_PUBLISH_EVENTS,
               max_event_bytes=MAX_EVENT_BYTES, event_types=(EXTRA_TYPE,), **GENEROUS_RATES)
def test_publish_bodies_get_the_documented_status_and_history_holds_exactly_the_accepted(
        service, port, http, io_loop, caplog):
    fuzzer = PublishFuzzer(port, http)
    sentinel = {"type": "risk_alert", "project_id": "my-project", "data": {"severity": "low", "message": "go"}}
    io_loop.run_sync(lambda: fuzzer.post(Body(json.dumps(sentinel).encode())))

    @hypothesis_settings(max_examples=250, **FUZZ_SETTINGS)
    @given(body=publish_bodies())
    def one_body(body: Body) -> None:
        io_loop.run_sync(lambda: fuzzer.post(body), timeout=15)

    for body in must_cover_bodies():
        one_body = example(body=body)(one_body)
    one_body()
    assert set(fuzzer.statuses) == {202, 400, 413, 415}, fuzzer.statuses

    history = io_loop.run_sync(fuzzer.history, timeout=15)
    assert [e["id"] for e in history] == [i for i, _ in fuzzer.accepted[1:]]
    for event, (event_id, published) in zip(history, fuzzer.accepted[1:]):
        data = published.get("data", {})
        project_id = published.get("project_id", data.get("project_id"))
        expected = {**data, "project_id": project_id}
        expected.setdefault("timestamp", event["timestamp"])
        assert (event["type"], event["project_id"], event["data"]) == (published["type"], project_id, expected), \
            f"{event_id}: {event} was published as {published}"
    assert service.broker.health()["history_size"] == len(fuzzer.accepted)
    assert_no_errors_logged(caplog)


# --- the bugs this fuzz found, each pinned by the input that showed it ----------------------------

async def test_a_project_id_with_a_trailing_newline_is_refused(port, http):
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "subscribe", "project_id": "my-project\n"})
    reply = await ws.receive()
    answer = await publish(http, port, {"type": "risk_alert", "project_id": "my-project\n",
                                        "data": {"severity": "low", "message": "m"}})
    assert (reply["type"], reply.get("code"), answer.code) == ("error", "invalid_message", 400)


async def test_an_integer_too_large_for_a_float_is_refused(port, http):
    body = ('{"type":"progress_update","project_id":"p","data":{"progress_percentage":1' + "0" * 400
            + ',"completed_tasks":1,"total_tasks":2}}')
    answer = await publish(http, port, body)
    ws, _ = await WsClient.connected(port)
    await ws.send('{"type":"ping","id":1' + "0" * 400 + "}")
    reply = await ws.receive()
    assert (answer.code, reply["type"], reply.get("code")) == (400, "error", "invalid_json")


async def test_a_resume_from_an_id_with_a_superscript_digit_is_not_recovered(port, http, service):
    epoch = service.broker.epoch
    answer = await http.fetch(f"http://127.0.0.1:{port}/api/v1/events?since={epoch}-%C2%B2",
                              raise_error=False)
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "subscribe", "last_event_id": f"{epoch}-\u00b2"})
    reply = await ws.receive()
    assert answer.code == 200 and json.loads(answer.body)["recovered"] is False
    assert (reply["type"], reply["recovered"]) == ("subscription_confirmed", False)
