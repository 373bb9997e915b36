"""The Server-Sent Events protocol over real sockets."""

from __future__ import annotations

import json

import pytest

from support import SseClient, eventually, file_change, progress, publish, with_settings


async def test_stream_headers_and_opening(port):
    sse, established = await SseClient.connected(port, "?event_types=file_change&project_id=my-project")
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.headers["cache-control"] == "no-cache"
    assert sse.headers["x-accel-buffering"] == "no"
    data = established["data"]
    assert data["type"] == "connection_established"
    assert data["event_types"] == ["file_change"] and data["project_id"] == "my-project"
    assert data["heartbeat_interval"] == 30.0 and data["protocol_version"] == 1


async def test_retry_comes_first(port):
    sse = await SseClient.open(port)
    first = await sse.receive()
    assert first["retry"] == "3000" and first["data"] is None


async def test_events_have_an_id_and_no_event_line(port, http):
    sse, _ = await SseClient.connected(port, "?event_types=file_change&project_id=my-project")
    reply = json.loads((await publish(http, port, file_change("src/app.py"))).body)
    [message] = await sse.events(1)
    assert message["event"] is None              # so EventSource.onmessage receives it
    assert message["id"] == reply["id"]
    assert message["data"]["type"] == "file_change"
    assert message["data"]["data"]["file_path"] == "src/app.py"


async def test_filters_by_type_and_project(port, http):
    sse, _ = await SseClient.connected(port, "?event_types=progress_update,risk_alert&project_id=my-project")
    await publish(http, port, [file_change(), progress(1, 0, 1, project="other"), progress(2, 0, 1)])
    [message] = await sse.events(1)
    assert message["data"]["data"]["progress_percentage"] == 2


async def test_empty_event_types_means_all(port, http):
    """The guide's RealTimeDashboard.connectSSE sends `event_types=` when it has no subscriptions."""
    sse, established = await SseClient.connected(port, "?event_types=")
    assert established["data"]["event_types"] == [
        "file_change", "auto_commit", "progress_update", "risk_alert"]
    await publish(http, port, [file_change(project="a"), progress(1, 0, 1, project="b")])
    assert [m["data"]["type"] for m in await sse.events(2)] == ["file_change", "progress_update"]


@pytest.mark.parametrize("query", ["?event_types=file_change,nope", "?project_id=bad%20id"])
async def test_bad_query_is_400_with_json_reason(port, http, query):
    response = await http.fetch(f"http://127.0.0.1:{port}/api/v1/sse/events{query}", raise_error=False)
    assert response.code == 400
    error = json.loads(response.body)["error"]
    assert error["status"] == 400 and error["reason"]
    if "nope" in query:
        assert error["valid_event_types"] == ["file_change", "auto_commit", "progress_update", "risk_alert"]


@with_settings(heartbeat=0.05)
async def test_heartbeats_are_named_events(port):
    sse, _ = await SseClient.connected(port)
    beats = [await sse.receive(timeout=2) for _ in range(3)]
    assert [b["event"] for b in beats] == ["heartbeat"] * 3
    assert all(b["data"]["type"] == "heartbeat" and b["id"] is None for b in beats)


# --- resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["header", "query", "both"])
async def test_resume_replays_exactly_the_missed_events(port, http, via):
    sse, _ = await SseClient.connected(port, "?event_types=file_change&project_id=my-project")
    await publish(http, port, file_change("seen.py"))
    [seen] = await sse.events(1)
    sse.close()
    await publish(http, port, [file_change("m0.py"), progress(1, 0, 1), file_change("m1.py"),
                               file_change("elsewhere.py", project="other"), file_change("m2.py")])
    query, headers = "?event_types=file_change&project_id=my-project", {}
    if via in ("header", "both"):
        headers["Last-Event-ID"] = seen["id"]
    if via in ("query", "both"):   # with both, the header wins: the query names an unknown id
        query += "&last_event_id=" + (seen["id"] if via == "query" else "deadbeef-1")
    sse, _ = await SseClient.connected(port, query, headers=headers)
    replayed = await sse.events(3)
    assert [m["data"]["data"]["file_path"] for m in replayed] == ["m0.py", "m1.py", "m2.py"]
    await publish(http, port, file_change("live.py"))
    [live] = await sse.events(1)
    assert live["data"]["data"]["file_path"] == "live.py"


async def test_unknown_last_event_id_gets_a_reset_then_live_events(port, http):
    await publish(http, port, file_change())
    sse, _ = await SseClient.connected(port, headers={"Last-Event-ID": "deadbeef-1"})
    reset = await sse.receive()
    assert reset["event"] == "reset"
    assert reset["data"]["last_event_id"] == "deadbeef-1" and reset["data"]["reason"]
    await publish(http, port, file_change("after.py"))
    [live] = await sse.events(1)
    assert live["data"]["data"]["file_path"] == "after.py"


@with_settings(history=2)
async def test_evicted_last_event_id_gets_a_reset(port, http):
    oldest = json.loads((await publish(http, port, file_change())).body)["id"]
    await publish(http, port, [file_change(), file_change(), file_change()])
    sse, _ = await SseClient.connected(port, headers={"Last-Event-ID": oldest})
    assert (await sse.receive())["event"] == "reset"


async def test_disconnect_leaves_the_stats(port, http, service):
    sse, _ = await SseClient.connected(port)
    stats = json.loads((await http.fetch(f"http://127.0.0.1:{port}/api/v1/sse/stats")).body)
    assert stats["sse_connections"] == 1 and stats["total_connections"] == 1
    sse.close()
    await eventually(lambda: not service.hub.connections())
    stats = json.loads((await http.fetch(f"http://127.0.0.1:{port}/api/v1/sse/stats")).body)
    assert stats["sse_connections"] == 0 and stats["total_connections"] == 0
