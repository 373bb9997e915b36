"""The WebSocket protocol, message by message, over real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

from support import WsClient, file_change, progress, publish, with_settings


async def test_connection_established_names_the_protocol(port):
    ws, established = await WsClient.connected(port)
    assert established["connection_id"]
    assert established["heartbeat_interval"] == 30.0
    assert established["available_event_types"] == [
        "file_change", "auto_commit", "progress_update", "risk_alert"]
    assert established["protocol_version"] == 1
    assert established["timestamp"].endswith("Z")
    ws.close()


async def test_nothing_arrives_before_subscribe(port, http):
    ws, _ = await WsClient.connected(port)
    await publish(http, port, file_change())
    await ws.expect_silence()
    ws.close()


async def test_events_are_envelopes_typed_by_event_type(port, http):
    ws, _ = await WsClient.connected(port)
    confirmed = await ws.subscribe(event_types=["file_change", "progress_update"], project_id="my-project")
    assert confirmed == {"type": "subscription_confirmed", "event_types": ["file_change", "progress_update"],
                         "project_id": "my-project", "recovered": True, "replayed": 0}
    reply = json.loads((await publish(http, port, file_change("src/app.py"))).body)
    [event] = await ws.events(1)
    assert event["type"] == "file_change"
    assert event["id"] == reply["id"]
    assert event["project_id"] == "my-project"
    assert event["data"]["file_path"] == "src/app.py"
    assert event["data"]["project_id"] == "my-project"
    assert event["data"]["timestamp"] == event["timestamp"]
    ws.close()


async def test_filters_by_type_and_project(port, http):
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["progress_update"], project_id="my-project")
    await publish(http, port, file_change())                               # wrong type
    await publish(http, port, progress(10, 1, 10, project="other"))        # wrong project
    await publish(http, port, progress(20, 2, 10))                         # the one
    [event] = await ws.events(1)
    assert (event["type"], event["data"]["progress_percentage"]) == ("progress_update", 20)
    await ws.expect_silence()
    ws.close()


async def test_subscribe_without_types_or_project_gets_everything(port, http):
    ws, _ = await WsClient.connected(port)
    confirmed = await ws.subscribe()
    assert confirmed["event_types"] == ["file_change", "auto_commit", "progress_update", "risk_alert"]
    assert confirmed["project_id"] is None
    await publish(http, port, [file_change(project="a"), progress(5, 1, 20, project="b")])
    events = await ws.events(2)
    assert [(e["type"], e["project_id"]) for e in events] == [("file_change", "a"), ("progress_update", "b")]
    ws.close()


async def test_subscribe_replaces_the_filter(port, http):
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change"])
    await ws.subscribe(event_types=["progress_update"])
    await publish(http, port, file_change())
    await publish(http, port, progress(50, 5, 10))
    [event] = await ws.events(1)
    assert event["type"] == "progress_update"
    ws.close()


async def test_unsubscribe_some_then_all(port, http):
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change", "progress_update"])
    await ws.send({"type": "unsubscribe", "event_types": ["file_change"]})
    assert await ws.receive_type("unsubscription_confirmed") == {
        "type": "unsubscription_confirmed", "event_types": ["progress_update"]}
    await publish(http, port, file_change())
    await publish(http, port, progress(1, 0, 1))
    [event] = await ws.events(1)
    assert event["type"] == "progress_update"
    await ws.send({"type": "unsubscribe", "event_types": []})   # an empty list removes nothing
    assert (await ws.receive_type("unsubscription_confirmed"))["event_types"] == ["progress_update"]
    await ws.send({"type": "unsubscribe"})                      # a missing list removes everything
    assert (await ws.receive_type("unsubscription_confirmed"))["event_types"] == []
    await publish(http, port, progress(2, 0, 1))
    await ws.expect_silence()
    ws.close()


async def test_ping_pong_echoes_id(port):
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "ping", "id": 7})
    pong = await ws.receive_type("pong")
    assert pong["id"] == 7 and pong["timestamp"].endswith("Z")
    await ws.send({"type": "ping"})
    assert "id" not in await ws.receive_type("pong")
    ws.close()


@pytest.mark.parametrize("message, code", [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('{"no_type": 1}', "invalid_message"),
    ('{"type": 5}', "invalid_message"),
    ('{"type": "dance"}', "unknown_message_type"),
    ('{"type": "subscribe", "event_types": ["file_change", "nope"]}', "invalid_event_type"),
    ('{"type": "subscribe", "event_types": "file_change"}', "invalid_message"),
    ('{"type": "subscribe", "project_id": 12}', "invalid_message"),
    ('{"type": "subscribe", "project_id": "has space"}', "invalid_message"),
    ('{"type": "subscribe", "last_event_id": 3}', "invalid_message"),
    ('{"type": "unsubscribe", "event_types": ["nope"]}', "invalid_event_type"),
    ('{"type": "ping", "x": NaN}', "invalid_json"),
    pytest.param("[" * 5_000 + "]" * 5_000, "invalid_json", id="nested-too-deeply"),
    ('{"type": "ping", "id": 1e400}', "invalid_json"),
    ('{"type": "ping", "id": "\\udc00"}', "invalid_json"),
    (b"\x00binary", "invalid_message"),
])
async def test_bad_input_gets_an_error_and_the_connection_lives_on(port, message, code):
    ws, _ = await WsClient.connected(port)
    await ws.connection.write_message(message, binary=isinstance(message, bytes))
    error = await ws.receive_type("error")
    assert error["code"] == code and error["message"]
    await ws.send({"type": "ping", "id": "still-alive"})
    assert (await ws.receive_type("pong"))["id"] == "still-alive"
    ws.close()


async def test_invalid_event_type_error_names_the_valid_types(port):
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "subscribe", "event_types": ["nope"]})
    error = await ws.receive_type("error")
    assert "file_change" in error["message"] and "risk_alert" in error["message"]
    ws.close()


@with_settings(max_message_bytes=1024)
async def test_oversized_message_closes_with_1009(port):
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "ping", "padding": "x" * 2048})
    code, _ = await ws.closed()
    assert code == 1009


@with_settings(heartbeat=0.05)
async def test_heartbeats_arrive_at_the_interval(port):
    ws, established = await WsClient.connected(port)
    assert established["heartbeat_interval"] == 0.05
    beats = [await ws.receive(timeout=2) for _ in range(3)]
    assert [b["type"] for b in beats] == ["heartbeat"] * 3
    assert all(b["timestamp"].endswith("Z") for b in beats)
    ws.close()


async def test_cross_origin_handshake_is_refused(port):
    with pytest.raises(HTTPClientError) as refused:
        await WsClient.open(port, headers={"Origin": "https://evil.example"})
    assert refused.value.code == 403


async def test_same_origin_handshake_is_accepted(port):
    ws, _ = await WsClient.connected(port, headers={"Origin": f"http://127.0.0.1:{port}"})
    ws.close()


@with_settings(cors_origins=("https://dash.example.com",))
async def test_configured_origin_handshake_is_accepted(port):
    ws, _ = await WsClient.connected(port, headers={"Origin": "https://dash.example.com"})
    ws.close()
    with pytest.raises(HTTPClientError):
        await WsClient.open(port, headers={"Origin": "https://other.example.com"})


# --- resume ----------------------------------------------------------------------------------

async def test_resume_replays_exactly_the_missed_events_then_goes_live(port, http):
    ws, _ = await WsClient.connected(port)
    await ws.subscribe(event_types=["file_change"], project_id="my-project")
    await publish(http, port, file_change("seen.py"))
    [seen] = await ws.events(1)
    ws.close()
    missed = [file_change(f"missed-{i}.py") for i in range(5)]
    await publish(http, port, [missed[0], progress(1, 0, 1), missed[1], file_change(project="other")])
    await publish(http, port, missed[2:])

    ws, _ = await WsClient.connected(port)
    confirmed = await ws.subscribe(event_types=["file_change"], project_id="my-project",
                                   last_event_id=seen["id"])
    assert (confirmed["recovered"], confirmed["replayed"]) == (True, 5)
    replayed = await ws.events(5)
    assert [e["data"]["file_path"] for e in replayed] == [f"missed-{i}.py" for i in range(5)]
    await publish(http, port, file_change("live.py"))
    [live] = await ws.events(1)
    assert live["data"]["file_path"] == "live.py"
    await ws.expect_silence()
    ws.close()


async def test_resume_from_the_latest_id_replays_nothing(port, http):
    reply = json.loads((await publish(http, port, file_change())).body)
    ws, _ = await WsClient.connected(port)
    confirmed = await ws.subscribe(last_event_id=reply["id"])
    assert (confirmed["recovered"], confirmed["replayed"]) == (True, 0)
    await ws.expect_silence()
    ws.close()


async def test_events_published_during_a_replay_arrive_once_in_order(port, http, service):
    """The live feed is held while history is replayed: nothing is lost between the two and nothing
    appears twice."""
    first = json.loads((await publish(http, port, file_change("0.py"))).body)["id"]
    await publish(http, port, [file_change(f"{i}.py") for i in range(1, 600)])   # > one replay slice
    ws, _ = await WsClient.connected(port)
    await ws.send({"type": "subscribe", "event_types": ["file_change"], "last_event_id": first})
    # publish while the server is still writing the replay slices
    concurrent = asyncio.ensure_future(publish(http, port, [file_change(f"{i}.py") for i in range(600, 650)]))
    confirmed = await ws.receive_type("subscription_confirmed")
    assert confirmed["recovered"] is True
    received = await ws.events(649)
    await concurrent
    assert [e["data"]["file_path"] for e in received] == [f"{i}.py" for i in range(1, 650)]
    await ws.expect_silence()
    ws.close()


@pytest.mark.parametrize("last_event_id", ["deadbeef-1", "garbage", "x" * 128])
async def test_unknown_id_is_not_recovered(port, http, last_event_id):
    await publish(http, port, file_change())
    ws, _ = await WsClient.connected(port)
    confirmed = await ws.subscribe(last_event_id=last_event_id)
    assert (confirmed["recovered"], confirmed["replayed"]) == (False, 0)
    await publish(http, port, file_change("after.py"))
    [live] = await ws.events(1)
    assert live["data"]["file_path"] == "after.py"
    ws.close()


@with_settings(history=3)
async def test_evicted_id_is_not_recovered(port, http):
    oldest = json.loads((await publish(http, port, file_change("old.py"))).body)["id"]
    await publish(http, port, [file_change(f"{i}.py") for i in range(4)])
    ws, _ = await WsClient.connected(port)
    confirmed = await ws.subscribe(last_event_id=oldest)
    assert (confirmed["recovered"], confirmed["replayed"]) == (False, 0)
    ws.close()


# --- slow consumers --------------------------------------------------------------------------

@with_settings(queue_max_bytes=256 * 1024)
async def test_slow_consumer_is_closed_with_4008_while_others_keep_receiving(port, http, service):
    slow, _ = await WsClient.connected(port)
    await slow.subscribe(event_types=["file_change"])
    fast, _ = await WsClient.connected(port)
    await fast.subscribe(event_types=["file_change"])
    # `slow` never reads again: tornado's client then stops reading its socket, the kernel buffers
    # fill, and the server's queue for it grows until it passes queue_max_bytes.
    batch = [file_change(f"{i}-" + "f" * 8000) for i in range(10)]
    published = 0
    while service.hub.stats.slow_consumer_closes == 0 and published < 10_000:
        await publish(http, port, batch)
        published += len(batch)
        assert len(await fast.events(len(batch))) == len(batch)   # the fast one keeps up all along
    assert service.hub.stats.slow_consumer_closes == 1
    assert len(service.hub.connections("websocket")) == 1
    code, reason = await slow.closed(timeout=10)
    assert (code, reason) == (4008, "slow consumer")
    await publish(http, port, file_change("after.py"))
    [after] = await fast.events(1)
    assert after["data"]["file_path"] == "after.py"
