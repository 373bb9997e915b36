"""The HTTP API: publish, history, stats, projects, health, CORS, errors."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from support import SseClient, WsClient, eventually, file_change, progress, publish, with_settings

TYPES = ["file_change", "auto_commit", "progress_update", "risk_alert"]


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


async def get_json(http, port, path, **kwargs):
    response = await http.fetch(url(port, path), raise_error=False, **kwargs)
    return response.code, json.loads(response.body)


# --- publish ---------------------------------------------------------------------------------

async def test_publish_one_returns_202_with_its_id(port, http):
    response = await publish(http, port, file_change())
    assert response.code == 202
    reply = json.loads(response.body)
    assert reply["ids"] == [reply["id"]]


async def test_publish_array_returns_ids_in_order(port, http):
    response = await publish(http, port, [file_change("a"), file_change("b"), progress(5, 1, 20)])
    assert response.code == 202
    ids = json.loads(response.body)["ids"]
    _, history = await get_json(http, port, "/api/v1/events")
    assert [e["id"] for e in history["events"]] == ids


async def test_project_id_may_be_given_in_data_only(port, http):
    body = {"type": "risk_alert", "data": {"severity": "high", "message": "Progress slowing down",
                                           "project_id": "p1", "timestamp": "2024-01-15T10:30:00Z"}}
    assert (await publish(http, port, body)).code == 202
    _, history = await get_json(http, port, "/api/v1/events")
    [event] = history["events"]
    assert event["project_id"] == "p1"
    assert event["data"]["timestamp"] == "2024-01-15T10:30:00Z"      # the publisher's own, untouched
    assert event["timestamp"] != "2024-01-15T10:30:00Z"              # the envelope's is the server's


async def test_extra_fields_pass_through_untouched(port, http):
    body = file_change()
    body["data"]["editor"] = {"name": "vim", "pid": 42}
    await publish(http, port, body)
    _, history = await get_json(http, port, "/api/v1/events")
    assert history["events"][0]["data"]["editor"] == {"name": "vim", "pid": 42}


@pytest.mark.parametrize("body, fragment", [
    ({"type": "nope", "project_id": "p", "data": {}}, "unknown event type 'nope'"),
    ({"project_id": "p", "data": {}}, "type must be one of"),
    ({"type": "file_change", "data": {"file_path": "a", "change_type": "modified"}}, "project_id is required"),
    ({"type": "file_change", "project_id": "a", "data": {"project_id": "b", "file_path": "x",
                                                         "change_type": "modified"}}, "disagree"),
    ({"type": "file_change", "project_id": "has space", "data": {}}, "project_id must be"),
    ({"type": "file_change", "project_id": "p", "data": {"file_path": "x"}}, "missing change_type"),
    ({"type": "file_change", "project_id": "p", "data": {"file_path": "x", "change_type": "renamed"}},
     "change_type must be one of created, modified, deleted, moved"),
    ({"type": "file_change", "project_id": "p", "data": {"file_path": "", "change_type": "created"}},
     "file_path must be a non-empty string"),
    ({"type": "auto_commit", "project_id": "p", "data": {"event": "finish", "changes_count": 1}},
     "event must be one of start, result, error"),
    ({"type": "auto_commit", "project_id": "p", "data": {"event": "result", "changes_count": 1}},
     "success is required"),
    ({"type": "auto_commit", "project_id": "p", "data": {"event": "error", "changes_count": 1,
                                                         "success": True}}, "success must be false"),
    ({"type": "auto_commit", "project_id": "p", "data": {"event": "start", "changes_count": -1}},
     "changes_count must be a whole number"),
    ({"type": "progress_update", "project_id": "p", "data": {"progress_percentage": 100.5,
                                                             "completed_tasks": 1, "total_tasks": 1}},
     "progress_percentage must be a number from 0 to 100"),
    ({"type": "progress_update", "project_id": "p", "data": {"progress_percentage": 50,
                                                             "completed_tasks": 3, "total_tasks": 2}},
     "completed_tasks must not exceed"),
    ({"type": "progress_update", "project_id": "p", "data": {"progress_percentage": True,
                                                             "completed_tasks": 1, "total_tasks": 2}},
     "progress_percentage must be a number"),
    ({"type": "risk_alert", "project_id": "p", "data": {"severity": "urgent", "message": "x"}},
     "severity must be one of low, medium, high, critical"),
    ({"type": "risk_alert", "project_id": "p", "data": {"severity": "low", "message": "x",
                                                        "timestamp": "yesterday"}}, "ISO-8601"),
    ({"type": "risk_alert", "project_id": "p", "data": [1]}, "data must be a JSON object"),
    ({"type": "risk_alert", "project_id": "p", "data": {}, "id": "mine"}, "unknown field(s) id"),
    ([], "at least one event"),
    ('"just a string"', "must be a JSON object"),
])
async def test_invalid_publish_is_400_with_the_reason(port, http, body, fragment):
    response = await publish(http, port, body)
    assert response.code == 400
    error = json.loads(response.body)["error"]
    assert fragment in error["reason"], error


@pytest.mark.parametrize("body, fragment", [
    (b"{nope", "not valid JSON"),
    (b'{"type": "risk_alert", "project_id": "p", "data": {"severity": "low", "message": "m", "x": NaN}}',
     "NaN is not valid JSON"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="nested-too-deeply"),
    pytest.param(b'{"type": "risk_alert", "project_id": "p", "data": {"severity": "low", "message": "m",'
                 b' "x": ' + b"[" * 70 + b"]" * 70 + b"}}", "more than 64 levels", id="nested-near-the-limit"),
    (b'{"type": "risk_alert", "project_id": "p", "data": {"severity": "low", "message": "m", "x": 1e400}}',
     "too large for a number"),
    (b'{"type": "risk_alert", "project_id": "p", "data": {"severity": "low", "message": "\\ud800"}}',
     "lone surrogate"),
    (b"\xff\xfe{}", "not valid JSON"),
])
async def test_malformed_json_is_400(port, http, body, fragment):
    response = await publish(http, port, body)
    assert response.code == 400
    assert fragment in json.loads(response.body)["error"]["reason"]


async def test_array_publish_is_atomic(port, http):
    response = await publish(http, port, [file_change("ok.py"), progress(150, 1, 1)])
    assert response.code == 400
    error = json.loads(response.body)["error"]
    assert error["index"] == 1
    _, history = await get_json(http, port, "/api/v1/events")
    assert history["events"] == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_publish_other_than_json_is_415(port, http, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await http.fetch(url(port, "/api/v1/events"), method="POST", headers=headers,
                                body=json.dumps(file_change()), raise_error=False)
    assert response.code == 415
    assert "application/json" in json.loads(response.body)["error"]["reason"]


async def test_charset_parameter_is_accepted(port, http):
    response = await publish(http, port, file_change(),
                             headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.code == 202


@with_settings(max_event_bytes=1024)
async def test_event_over_the_size_limit_is_413(port, http):
    body = file_change()
    body["data"]["blob"] = "x" * 1024
    response = await publish(http, port, body)
    assert response.code == 413
    assert "limit is 1024" in json.loads(response.body)["error"]["reason"]


@with_settings(max_publish_bytes=2048)
async def test_body_over_the_limit_is_413_before_it_is_read(port, http):
    response = await publish(http, port, [file_change(f"{i}.py") for i in range(100)])
    assert response.code == 413
    assert "limit is 2048" in json.loads(response.body)["error"]["reason"]


@with_settings(max_publish_bytes=2048)
async def test_chunked_body_over_the_limit_is_413(port):
    """A body with no Content-Length is counted as it arrives."""
    from tornado.tcpclient import TCPClient

    stream = await TCPClient().connect("127.0.0.1", port)
    body = json.dumps([file_change(f"{i}.py") for i in range(30)]).encode()
    assert 2048 < len(body) < 4096
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 500]), body[i:i + 500])
                      for i in range(0, len(body), 500))
    await stream.write(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    head = (await stream.read_until(b"\r\n\r\n")).decode()
    assert head.startswith("HTTP/1.1 413")
    length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
    error = json.loads(await stream.read_bytes(length))["error"]
    assert "over the limit of 2048" in error["reason"]
    stream.close()


@with_settings(max_publish_events=3)
async def test_too_many_events_in_one_publish_is_413(port, http):
    response = await publish(http, port, [file_change()] * 4)
    assert response.code == 413


@with_settings(publish_token="s3cret")
async def test_publish_token_guards_publishing(port, http):
    assert (await publish(http, port, file_change())).code == 401
    wrong = await publish(http, port, file_change(), headers={"Authorization": "Bearer nope"})
    assert wrong.code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    right = await publish(http, port, file_change(), headers={"Authorization": "Bearer s3cret"})
    assert right.code == 202
    code, _ = await get_json(http, port, "/api/v1/events")   # reading stays open
    assert code == 200


# --- history ---------------------------------------------------------------------------------

async def test_history_filters_and_limits(port, http):
    await publish(http, port, [file_change("a", project="p1"), progress(1, 0, 1, project="p1"),
                               file_change("b", project="p2"), file_change("c", project="p1")])
    _, page = await get_json(http, port, "/api/v1/events?event_types=file_change&project_id=p1")
    assert [e["data"]["file_path"] for e in page["events"]] == ["a", "c"]
    _, page = await get_json(http, port, "/api/v1/events?limit=2")
    assert [e["type"] for e in page["events"]] == ["file_change", "file_change"]   # the latest two
    assert page["events"][-1]["data"]["file_path"] == "c"


async def test_history_since_an_id(port, http):
    ids = json.loads((await publish(http, port, [file_change(f"{i}") for i in range(5)])).body)["ids"]
    _, page = await get_json(http, port, f"/api/v1/events?since={ids[1]}&limit=2")
    assert [e["id"] for e in page["events"]] == ids[2:4]
    assert page["recovered"] is True and page["last_event_id"] == ids[3]
    _, page = await get_json(http, port, "/api/v1/events?since=deadbeef-3")
    assert page == {"events": [], "recovered": False, "last_event_id": "deadbeef-3"}


@pytest.mark.parametrize("query", ["?limit=0", "?limit=1001", "?limit=ten", "?event_types=nope",
                                   "?project_id=bad%20id", "?since=" + "x" * 129])
async def test_history_bad_query_is_400(port, http, query):
    code, body = await get_json(http, port, "/api/v1/events" + query)
    assert code == 400 and body["error"]["reason"]


# --- stats, projects, health, errors ---------------------------------------------------------

async def test_stats_count_connections_and_subscriptions(port, http, service):
    ws1, _ = await WsClient.connected(port)
    await ws1.subscribe(event_types=["file_change", "auto_commit"])
    ws2, _ = await WsClient.connected(port)
    await ws2.subscribe(event_types=["file_change"])
    sse, _ = await SseClient.connected(port, "?event_types=progress_update")
    _, ws_stats = await get_json(http, port, "/api/v1/dashboard/ws/stats")
    assert ws_stats["websocket_connections"] == 2 and ws_stats["total_connections"] == 3
    assert ws_stats["subscription_counts"] == {"file_change": 2, "auto_commit": 1, "progress_update": 0,
                                               "risk_alert": 0}
    assert ws_stats["message_queue_size"] == 0
    _, sse_stats = await get_json(http, port, "/api/v1/sse/stats")
    assert sse_stats["sse_connections"] == 1 and sse_stats["total_connections"] == 3
    assert sse_stats["subscription_counts"]["progress_update"] == 1

    ws1.close()
    sse.close()
    await ws1.connection.read_message()   # returns once the close handshake is done
    await sse.end_of_stream()
    await eventually(lambda: len(service.hub.connections()) == 1)
    _, ws_stats = await get_json(http, port, "/api/v1/dashboard/ws/stats")
    assert ws_stats["websocket_connections"] == 1 and ws_stats["total_connections"] == 1
    assert ws_stats["subscription_counts"]["auto_commit"] == 0


@with_settings(heartbeat=0.2)
async def test_a_vanished_client_leaves_the_stats_within_one_heartbeat(port, service):
    """A client that goes away without a close frame (its process died) is noticed by the heartbeat
    at the latest."""
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"GET /api/v1/dashboard/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
    await eventually(lambda: len(service.hub.connections()) == 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()   # linger 0: a reset, no close frame
    loop_time = __import__("asyncio").get_running_loop().time
    gone_by = loop_time() + 0.2 * 1.5
    await eventually(lambda: not service.hub.connections())
    assert loop_time() <= gone_by


async def test_projects_list_configured_and_published_with_latest_progress(port, http, tmp_path):
    await publish(http, port, [progress(40, 4, 10), progress(75.5, 15, 20), file_change(project="side")])
    _, body = await get_json(http, port, "/api/v1/projects")
    projects = {p["id"]: p for p in body["projects"]}
    assert projects["my-project"]["configured"] is True
    assert projects["my-project"]["path"] == str(tmp_path)
    assert projects["my-project"]["progress"]["progress_percentage"] == 75.5
    assert projects["my-project"]["progress"]["completed_tasks"] == 15
    assert projects["side"] == {"id": "side", "path": None, "configured": False, "progress": None}


async def test_health_reports_the_broker(port, http):
    code, body = await get_json(http, port, "/api/v1/health")
    assert code == 200 and body["status"] == "ok"
    assert body["broker"]["kind"] == "memory" and body["broker"]["state"] == "ok"


async def test_answers_carry_no_etag(port, http):
    response = await http.fetch(url(port, "/api/v1/events"))
    assert "Etag" not in response.headers and response.headers["Cache-Control"] == "no-store"


async def test_unknown_path_is_json_404(port, http):
    code, body = await get_json(http, port, "/api/v2/nothing")
    assert code == 404 and "no such endpoint" in body["error"]["reason"]


async def test_dashboard_page(port, http):
    """One self-contained page: CSS and JS inlined, no favicon request, relative URLs, the test hooks."""
    response = await http.fetch(url(port, "/"))
    assert response.headers["Content-Type"].startswith("text/html")
    body = response.body.decode()
    assert body.lower().startswith("<!doctype html>")
    assert "__DASHBOARD_" not in body                      # both markers replaced
    assert '<link rel="icon" href="data:,">' in body
    assert "'api/v1/dashboard/ws'" in body and "'api/v1/sse/events'" in body
    assert "'/api/" not in body                             # every URL relative to the page
    for hook in ("progress-percentage", "progress-counts", "file-change-count", "file-change-list",
                 "commit-list", "risk-list", "connection-state", "project-picker", "toast-region"):
        assert f'data-testid="{hook}"' in body
    assert 'aria-live="polite"' in body
    assert "<script src" not in body and "stylesheet" not in body


# --- CORS ------------------------------------------------------------------------------------

async def test_no_cors_headers_without_configured_origins(port, http):
    response = await http.fetch(url(port, "/api/v1/events"), headers={"Origin": "https://x.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await http.fetch(url(port, "/api/v1/events"), method="OPTIONS", raise_error=False,
                                 headers={"Origin": "https://x.example",
                                          "Access-Control-Request-Method": "POST"})
    assert preflight.code == 403


@with_settings(cors_origins=("https://dash.example.com",))
async def test_configured_origin_gets_cors_headers(port, http):
    allowed = {"Origin": "https://dash.example.com"}
    response = await http.fetch(url(port, "/api/v1/events"), headers=allowed)
    assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    assert response.headers["Vary"] == "Origin"
    preflight = await http.fetch(url(port, "/api/v1/events"), method="OPTIONS",
                                 headers={**allowed, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "content-type"})
    assert preflight.code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    refused = await publish(http, port, {"type": "nope"}, headers=allowed)   # errors are readable too
    assert refused.code == 400
    assert refused.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    sse = await http.fetch(url(port, "/api/v1/sse/stats"), headers={"Origin": "https://other.example"})
    assert "Access-Control-Allow-Origin" not in sse.headers


async def test_a_query_token_is_redacted_in_the_access_log(port, http, caplog):
    """Tokens travel in query strings for browsers; they must not land in access logs."""
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        await http.fetch(f"http://127.0.0.1:{port}/api/v1/events?token=s3cr3t-value&limit=1")
    [line] = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert "s3cr3t-value" not in line
    assert "/api/v1/events?token=[redacted]&limit=1" in line and line.startswith("200 GET")
