"""Events: the four types of the guide, their validation, and their encodings.

An `Event` is immutable once the broker has given it an id. Its JSON, SSE frame and WebSocket frame are
computed lazily, once, and then shared by every connection that receives it: fan-out never re-encodes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

DEFAULT_MAX_EVENT_BYTES = 64 * 1024

# \Z, not $: `$` also matches before a final newline, which would let "my-project\n" through `.match`.
PROJECT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
EVENT_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")

CHANGE_TYPES = ("created", "modified", "deleted", "moved")
COMMIT_EVENTS = ("start", "result", "error")
COMMIT_TRIGGERS = ("quiet_period", "schedule", "manual")
SEVERITIES = ("low", "medium", "high", "critical")

# Names that are control messages on the wire; an event type may not take one of them.
CONTROL_TYPES = frozenset({
    "connection_established", "subscription_confirmed", "unsubscription_confirmed", "pong", "heartbeat",
    "error", "reset", "subscribe", "unsubscribe", "ping",
})


class EventValidationError(ValueError):
    """A publish was refused; the message is the reason shown to the publisher."""


class EventTooLargeError(EventValidationError):
    """The encoded event is over the configured size limit (HTTP 413)."""


def utc_now_iso() -> str:
    """UTC timestamp with millisecond precision and a `Z` suffix, as every message carries."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


MAX_JSON_DEPTH = 64   # far beyond any real event; keeps encoding away from the recursion limit


def loads(text: str | bytes) -> Any:
    """Parse client JSON strictly, so that whatever we accept can always be encoded again: NaN,
    Infinity, numbers too large for a float, lone surrogates and nesting deeper than MAX_JSON_DEPTH
    are refused with ValueError."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_float_sized_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _check_encodable(value)
    return value


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a number")
    return number


def _float_sized_int(text: str) -> int:
    """Integers must fit a float too: JavaScript clients read every number as one, and range checks
    compare with floats."""
    number = int(text)
    try:
        float(number)
    except OverflowError:
        raise ValueError(f"{text[:20]}... is too large for a number") from None
    return number


def _check_encodable(value: Any) -> None:
    """Walk the parsed value without recursion: depth, and strings that UTF-8 can carry."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_string(item)
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested too deeply (more than {MAX_JSON_DEPTH} levels)")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_string(key)
                    pending.append((child, depth + 1))
            else:
                pending.extend((child, depth + 1) for child in item)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff), which is not valid "
                         "Unicode") from None


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON: the one encoder for everything the server sends."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# --- framing ---------------------------------------------------------------------------------

def websocket_text_frame(payload: bytes, *, compressed: bool = False) -> bytes:
    """An unmasked, final RFC 6455 text frame, ready to write to a server socket. Uncompressed, the same
    bytes suit every connection; `compressed` (RSV1, RFC 7692) marks a payload deflated for one."""
    first = 0xC1 if compressed else 0x81
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 1 << 16:
        header = bytes((first, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + length.to_bytes(8, "big")
    return header + payload


def sse_frame(payload: bytes, *, event_id: str | None = None, name: str | None = None) -> bytes:
    """One SSE message. Compact JSON holds no raw newline, so a single `data:` line is always enough."""
    head = b""
    if event_id is not None:
        head += b"id: " + event_id.encode("utf-8") + b"\n"
    if name is not None:
        head += b"event: " + name.encode("utf-8") + b"\n"
    return head + b"data: " + payload + b"\n\n"


# --- validation of the data of each type -----------------------------------------------------

FieldCheck = Callable[[Any], str | None]   # returns a complaint, or None when the value is fine


def _non_empty_string(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "must be a whole number >= 0"


def _one_of(choices: tuple[str, ...]) -> FieldCheck:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)
    return check


def _number_between(low: float, high: float) -> FieldCheck:
    def check(value: Any) -> str | None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and low <= value <= high)
        return None if ok else f"must be a number from {low:g} to {high:g}"
    return check


def _timestamp(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return None
        except ValueError:
            pass
    return "must be an ISO-8601 timestamp such as 2024-01-15T10:30:00Z"


@dataclass(frozen=True)
class EventType:
    """A registered event type: which `data` fields it requires and how each known field is checked.

    Fields not named here pass through untouched. `rules` are cross-field checks.
    """

    name: str
    required: Mapping[str, FieldCheck] = field(default_factory=dict)
    optional: Mapping[str, FieldCheck] = field(default_factory=dict)
    rules: tuple[Callable[[Mapping[str, Any]], str | None], ...] = ()

    def check(self, data: Mapping[str, Any]) -> None:
        missing = [name for name in self.required if name not in data]
        if missing:
            raise EventValidationError(f"{self.name}: data is missing " + ", ".join(missing))
        for checks in (self.required, self.optional):
            for name, check in checks.items():
                if name in data:
                    complaint = check(data[name])
                    if complaint:
                        raise EventValidationError(f"{self.name}: data.{name} {complaint}")
        for rule in self.rules:
            complaint = rule(data)
            if complaint:
                raise EventValidationError(f"{self.name}: {complaint}")


def _completed_within_total(data: Mapping[str, Any]) -> str | None:
    if data["completed_tasks"] > data["total_tasks"]:
        return "data.completed_tasks must not exceed data.total_tasks"
    return None


def _commit_outcome(data: Mapping[str, Any]) -> str | None:
    kind = data["event"]
    if kind in ("result", "error") and "success" not in data:
        return f"data.success is required when data.event is {kind}"
    if kind == "error" and data.get("success") is not False:
        return "data.success must be false when data.event is error"
    return None


def _old_path_only_for_moves(data: Mapping[str, Any]) -> str | None:
    if "old_path" in data and data["change_type"] != "moved":
        return "data.old_path is only for change_type moved"
    return None


_COMMON = {"project_id": _non_empty_string, "timestamp": _timestamp}

BUILTIN_TYPES: tuple[EventType, ...] = (
    EventType(
        "file_change",
        required={"file_path": _non_empty_string, "change_type": _one_of(CHANGE_TYPES)},
        optional={**_COMMON, "old_path": _non_empty_string},
        rules=(_old_path_only_for_moves,),
    ),
    EventType(
        "auto_commit",
        required={"event": _one_of(COMMIT_EVENTS), "changes_count": _count},
        optional={**_COMMON, "success": _boolean, "trigger": _one_of(COMMIT_TRIGGERS), "sha": _string,
                  "ref": _string, "reason": _string, "duration_ms": _number_between(0, math.inf)},
        rules=(_commit_outcome,),
    ),
    EventType(
        "progress_update",
        required={"progress_percentage": _number_between(0, 100), "completed_tasks": _count,
                  "total_tasks": _count},
        optional=_COMMON,
        rules=(_completed_within_total,),
    ),
    EventType(
        "risk_alert",
        required={"severity": _one_of(SEVERITIES), "message": _non_empty_string},
        optional=_COMMON,
    ),
)


def parse_extra_event_type(spec: str) -> EventType:
    """`name` or `name:field1,field2` (required non-null fields) from `--event-type`."""
    name, _, fields = spec.partition(":")
    name = name.strip()
    if not EVENT_TYPE_PATTERN.match(name) or name in CONTROL_TYPES:
        raise ValueError(f"invalid event type name {name!r}: lowercase letters, digits and _, "
                         "not a control message name")
    required = {f.strip(): _present for f in fields.split(",") if f.strip()}
    return EventType(name, required=required, optional=_COMMON)


def _present(value: Any) -> str | None:
    return None if value is not None else "must not be null"


class EventTypeRegistry:
    """The event types this server accepts: the built-ins plus any registered by configuration."""

    def __init__(self, extra: Iterable[EventType] = ()) -> None:
        self._types: dict[str, EventType] = {}
        for event_type in (*BUILTIN_TYPES, *extra):
            if event_type.name in self._types:
                raise ValueError(f"event type {event_type.name!r} is registered twice")
            self._types[event_type.name] = event_type

    @property
    def names(self) -> list[str]:
        return list(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def get(self, name: str) -> EventType:
        try:
            return self._types[name]
        except KeyError:
            raise EventValidationError(
                f"unknown event type {name!r}; valid types: " + ", ".join(self._types)) from None

    def parse_type_list(self, names: Iterable[Any]) -> frozenset[str] | None:
        """A filter's event types: None (= all) for an empty list; every name must be registered."""
        chosen = list(names)
        if not chosen:
            return None
        for name in chosen:
            if not isinstance(name, str) or name not in self._types:
                raise EventValidationError(
                    f"unknown event type {name!r}; valid types: " + ", ".join(self._types))
        return frozenset(chosen)


# --- events ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EventDraft:
    """A validated event the broker has not yet numbered."""

    type: str
    project_id: str
    timestamp: str
    data: dict[str, Any]


def validate_publish(raw: Any, registry: EventTypeRegistry,
                     max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> EventDraft:
    """Check one published object (`{type, project_id?, data}`) and fill the defaults docs/protocol.md
    names."""
    if not isinstance(raw, dict):
        raise EventValidationError("an event must be a JSON object with type, project_id and data")
    unknown = sorted(set(raw) - {"type", "project_id", "data"})
    if unknown:
        raise EventValidationError("unknown field(s) " + ", ".join(unknown)
                                   + "; an event has type, project_id and data")
    event_type = registry.get(raw.get("type")) if isinstance(raw.get("type"), str) else None
    if event_type is None:
        raise EventValidationError("type must be one of " + ", ".join(registry.names))
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise EventValidationError("data must be a JSON object")
    project_id = _resolve_project_id(raw.get("project_id"), data.get("project_id"))
    timestamp = utc_now_iso()
    data = {**data, "project_id": project_id}
    data.setdefault("timestamp", timestamp)
    event_type.check(data)
    draft = EventDraft(event_type.name, project_id, timestamp, data)
    try:   # sources pass Python data, which may hold what JSON cannot (a file name's lone surrogates)
        size = len(dumps({"type": draft.type, "id": _LONGEST_ID, "project_id": project_id,
                          "timestamp": timestamp, "data": data}))
    except (ValueError, TypeError, RecursionError) as error:   # UnicodeEncodeError is a ValueError
        raise EventValidationError(f"{draft.type}: data cannot be encoded as JSON: {error}") from None
    if size > max_bytes:
        raise EventTooLargeError(f"event is {size} bytes encoded; the limit is {max_bytes}")
    return draft


_LONGEST_ID = "0" * 48   # no broker's id is longer, so the size checked is never below the size sent


def _resolve_project_id(top: Any, inner: Any) -> str:
    if top is None and inner is None:
        raise EventValidationError("project_id is required (at the top level or in data)")
    if top is not None and inner is not None and top != inner:
        raise EventValidationError(f"project_id {top!r} and data.project_id {inner!r} disagree")
    project_id = top if top is not None else inner
    if not isinstance(project_id, str) or not PROJECT_ID_PATTERN.match(project_id):
        raise EventValidationError(
            "project_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return project_id


class Event:
    """A numbered event. `position` orders events within one broker; `id` is its opaque wire form."""

    __slots__ = ("type", "id", "position", "project_id", "timestamp", "data",
                 "_json", "_ws_frame", "_sse_frame")

    def __init__(self, draft: EventDraft, event_id: str, position: Any) -> None:
        self.type = draft.type
        self.project_id = draft.project_id
        self.timestamp = draft.timestamp
        self.data = draft.data
        self.id = event_id
        self.position = position
        self._json: bytes | None = None
        self._ws_frame: bytes | None = None
        self._sse_frame: bytes | None = None

    def envelope(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "project_id": self.project_id,
                "timestamp": self.timestamp, "data": self.data}

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps(self.envelope())
        return self._json

    @property
    def ws_frame(self) -> bytes:
        if self._ws_frame is None:
            self._ws_frame = websocket_text_frame(self.json)
        return self._ws_frame

    @property
    def sse_frame(self) -> bytes:
        """Project events carry no `event:` line so that `EventSource.onmessage` receives them."""
        if self._sse_frame is None:
            self._sse_frame = sse_frame(self.json, event_id=self.id)
        return self._sse_frame

    def __repr__(self) -> str:
        return f"Event({self.type!r}, id={self.id!r}, project_id={self.project_id!r})"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What a connection or a history query wants: None means every type / every project.

    `scope` is the projects a token allows (None: all); it narrows a filter that names no project
    to those projects, and is set by the server, never by the client's request."""

    types: frozenset[str] | None = None
    project_id: str | None = None
    scope: frozenset[str] | None = None

    def matches(self, event: Event) -> bool:
        return ((self.types is None or event.type in self.types)
                and (self.project_id is None or event.project_id == self.project_id)
                and (self.scope is None or event.project_id in self.scope))

    def without(self, types: Iterable[str] | None, all_types: Iterable[str]) -> EventFilter:
        """This filter less some types (None: less all of them). An empty remainder is returned as an
        empty frozenset, which matches nothing — not as None, which would match everything."""
        if types is None:
            return EventFilter(frozenset(), self.project_id, self.scope)
        current = self.types if self.types is not None else frozenset(all_types)
        return EventFilter(current - frozenset(types), self.project_id, self.scope)

    def describe_types(self, all_types: Iterable[str]) -> list[str]:
        """The types this filter admits, in registration order."""
        return [name for name in all_types if self.types is None or name in self.types]


def control_message(kind: str, **fields: Any) -> bytes:
    """JSON for a control message: its fields sit at the top level beside `type`."""
    return dumps({"type": kind, **fields})
