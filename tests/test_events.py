"""Events: validation rules, defaults, registry, and the encodings shared by every connection."""

from __future__ import annotations

import json

import pytest

from autopm_realtime.events import (Event, EventFilter, EventTooLargeError, EventTypeRegistry,
                                    EventValidationError, parse_extra_event_type, sse_frame,
                                    validate_publish, websocket_text_frame)

REGISTRY = EventTypeRegistry()


def draft(kind: str, data: dict, project: str = "p"):
    return validate_publish({"type": kind, "project_id": project, "data": data}, REGISTRY)


def test_defaults_fill_project_and_timestamp():
    made = draft("file_change", {"file_path": "a.py", "change_type": "created"})
    assert made.data["project_id"] == "p"
    assert made.data["timestamp"] == made.timestamp
    assert made.timestamp.endswith("Z") and len(made.timestamp) == len("2024-01-15T10:30:00.000Z")


def test_publisher_data_is_not_mutated():
    data = {"file_path": "a.py", "change_type": "created"}
    draft("file_change", data)
    assert data == {"file_path": "a.py", "change_type": "created"}


@pytest.mark.parametrize("kind, data", [
    ("file_change", {"file_path": "b.py", "change_type": "moved", "old_path": "a.py"}),
    ("auto_commit", {"event": "start", "changes_count": 0, "trigger": "schedule"}),
    ("auto_commit", {"event": "result", "success": True, "changes_count": 3, "sha": "ab" * 20,
                     "ref": "refs/autopm/autosave/main", "duration_ms": 12.5}),
    ("auto_commit", {"event": "error", "success": False, "changes_count": 3, "reason": "index.lock"}),
    ("progress_update", {"progress_percentage": 0, "completed_tasks": 0, "total_tasks": 0}),
    ("progress_update", {"progress_percentage": 100, "completed_tasks": 20, "total_tasks": 20}),
    ("risk_alert", {"severity": "critical", "message": "Progress slowing down", "rule": "velocity"}),
])
def test_valid_data_of_every_type(kind, data):
    assert draft(kind, data).type == kind


@pytest.mark.parametrize("kind, data", [
    ("file_change", {"file_path": "b.py", "change_type": "modified", "old_path": "a.py"}),
    ("auto_commit", {"event": "start", "changes_count": 1, "trigger": "whenever"}),
    ("auto_commit", {"event": "result", "success": "yes", "changes_count": 1}),
    ("auto_commit", {"event": "result", "success": True, "changes_count": 1, "duration_ms": -1}),
    ("auto_commit", {"event": "start", "changes_count": 1.5}),
    ("progress_update", {"progress_percentage": float("nan"), "completed_tasks": 0, "total_tasks": 0}),
    ("progress_update", {"progress_percentage": -0.1, "completed_tasks": 0, "total_tasks": 0}),
    ("progress_update", {"progress_percentage": "50", "completed_tasks": 0, "total_tasks": 0}),
    ("risk_alert", {"severity": "high", "message": ""}),
])
def test_invalid_data_is_refused(kind, data):
    with pytest.raises(EventValidationError):
        draft(kind, data)


@pytest.mark.parametrize("value", ["bad\udcff.py", float("inf"), object()])
def test_data_that_cannot_be_encoded_is_refused(value):
    """Sources pass Python data: a file name with invalid UTF-8 decodes to a lone surrogate."""
    with pytest.raises(EventValidationError, match="cannot be encoded"):
        draft("file_change", {"file_path": "x.py", "change_type": "created", "extra": value})


def test_size_limit_counts_the_whole_envelope():
    data = {"file_path": "a.py", "change_type": "created", "blob": "x" * 900}
    validate_publish({"type": "file_change", "project_id": "p", "data": data}, REGISTRY, max_bytes=1200)
    with pytest.raises(EventTooLargeError):
        validate_publish({"type": "file_change", "project_id": "p", "data": data}, REGISTRY, max_bytes=1000)


def test_extra_event_types_by_configuration():
    registry = EventTypeRegistry([parse_extra_event_type("deploy:environment,version")])
    assert registry.names[-1] == "deploy"
    made = validate_publish({"type": "deploy", "project_id": "p",
                             "data": {"environment": "prod", "version": "1.2"}}, registry)
    assert made.type == "deploy"
    with pytest.raises(EventValidationError, match="missing version"):
        validate_publish({"type": "deploy", "project_id": "p", "data": {"environment": "prod"}}, registry)


@pytest.mark.parametrize("spec", ["Deploy", "heartbeat", "has space", "", "file_change"])
def test_bad_extra_event_type_names(spec):
    with pytest.raises(ValueError):
        EventTypeRegistry([parse_extra_event_type(spec)])


def test_encodings_are_computed_once_and_shared():
    event = Event(draft("file_change", {"file_path": "ü.py", "change_type": "created"}), "e-1", 1)
    assert event.json is event.json
    assert event.ws_frame is event.ws_frame and event.sse_frame is event.sse_frame
    envelope = json.loads(event.json)
    assert list(envelope) == ["type", "id", "project_id", "timestamp", "data"]
    assert event.sse_frame == b"id: e-1\ndata: " + event.json + b"\n\n"
    assert event.ws_frame == websocket_text_frame(event.json)


@pytest.mark.parametrize("size, header", [(5, b"\x81\x05"), (126, b"\x81\x7e\x00\x7e"),
                                          (70_000, b"\x81\x7f" + (70_000).to_bytes(8, "big"))])
def test_websocket_frame_lengths(size, header):
    assert websocket_text_frame(b"x" * size) == header + b"x" * size


def test_named_sse_frame():
    assert sse_frame(b"{}", name="heartbeat") == b"event: heartbeat\ndata: {}\n\n"


def test_filter_without_types_keeps_matching_nothing_rather_than_everything():
    everything = EventFilter()
    nothing = everything.without(None, REGISTRY.names)
    event = Event(draft("risk_alert", {"severity": "low", "message": "m"}), "e-1", 1)
    assert everything.matches(event) and not nothing.matches(event)
    assert everything.without(["risk_alert"], REGISTRY.names).describe_types(REGISTRY.names) == [
        "file_change", "auto_commit", "progress_update"]
