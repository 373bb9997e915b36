"""JWT auth through the real server: who may connect, what a token lets it see and publish, and what
happens when the token runs out. (The crypto matrix is in test_auth_tokens.py.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import subprocess
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.httpclient import HTTPClientError

from autopm_realtime.tokens import mint_token
from autopm_realtime.config import Settings
from support import (WAIT, SseClient, WsClient, command, environment, eventually, file_change, publish,
                     risk, serving, with_settings)

SECRET = "auth-test-secret-" + "x" * 32
OTHER_SECRET = "someone-else-" + "y" * 32
PUBLISH_TOKEN = "static-publish-token-" + "z" * 16
ALL_TYPES = ["file_change", "auto_commit", "progress_update", "risk_alert"]


@pytest.fixture
def settings_overrides(request) -> dict[str, Any]:
    """Every server in this module has JWT auth on; `@with_settings(...)` adds to that."""
    return {"jwt_secret": SECRET, **getattr(request, "param", {})}


def token(**claims: Any) -> str:
    return mint_token(**{"secret": SECRET, "ttl_seconds": 60, **claims})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def publisher() -> dict[str, str]:
    return bearer(token(publish=True))


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


async def get(http, port: int, path: str, headers: dict[str, str] | None = None):
    return await http.fetch(url(port, path), headers=headers or {}, raise_error=False)


def reason(response) -> str:
    return json.loads(response.body)["error"]["reason"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())


def hs256_by_hand(payload: dict[str, Any], key: bytes) -> str:
    """HMAC-signed without PyJWT (which refuses a PEM as an HMAC secret)."""
    signing_input = unsigned({"alg": "HS256", "typ": "JWT"}, payload)
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


async def ws_refusal(port: int, **kwargs: Any) -> HTTPClientError:
    """The handshake's error: the server answers before the upgrade."""
    with pytest.raises(HTTPClientError) as caught:
        await WsClient.open(port, **kwargs)
    return caught.value


# --- who needs a token ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/events"), ("POST", "/api/v1/events"), ("GET", "/api/v1/projects"),
    ("GET", "/api/v1/dashboard/ws/stats"), ("GET", "/api/v1/sse/stats"), ("GET", "/api/v1/sse/events"),
    ("GET", "/metrics"), ("GET", "/api/v1/dashboard/ws"),
])
async def test_every_endpoint_needs_a_token(port, http, method, path):
    body = json.dumps(file_change()) if method == "POST" else None
    response = await http.fetch(url(port, path), method=method, body=body, raise_error=False,
                                headers={"Content-Type": "application/json"})
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert response.headers["Content-Type"].startswith("application/json")
    error = json.loads(response.body)["error"]
    assert error["status"] == 401 and "a token is required" in error["reason"]


async def test_health_and_the_page_are_open(port, http):
    health = await get(http, port, "/api/v1/health")
    assert health.code == 200 and json.loads(health.body)["status"] == "ok"
    page = await get(http, port, "/")
    assert page.code == 200 and page.headers["Content-Type"].startswith("text/html")


async def test_websocket_handshake_without_a_token_is_401(port):
    error = await ws_refusal(port)
    assert error.code == 401
    assert error.response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "a token is required" in reason(error.response)


@pytest.mark.parametrize("way", ["header", "query", "cookie"])
async def test_a_token_is_taken_from_the_header_the_query_or_the_cookie(port, http, way):
    value = token(projects=["my-project"])
    headers = {"header": bearer(value), "query": {}, "cookie": {"Cookie": f"autopm_token={value}"}}[way]
    query = f"?token={value}" if way == "query" else ""
    assert (await publish(http, port, file_change("src/a.py"), headers=publisher())).code == 202

    ws, _ = await WsClient.connected(port, headers=headers, path="/api/v1/dashboard/ws" + query)
    await ws.subscribe()
    sse, established = await SseClient.connected(port, query, headers=headers)
    assert established["data"]["type"] == "connection_established"
    history = await get(http, port, "/api/v1/events" + query, headers)
    assert history.code == 200
    assert [e["data"]["file_path"] for e in json.loads(history.body)["events"]] == ["src/a.py"]

    assert (await publish(http, port, file_change("src/b.py"), headers=publisher())).code == 202
    [event] = await ws.events(1)
    assert event["data"]["file_path"] == "src/b.py"
    [message] = await sse.events(1)
    assert message["data"]["data"]["file_path"] == "src/b.py"


# --- refused tokens ------------------------------------------------------------------------------

def _expired() -> str:
    return token(now=time.time() - 3600)


@pytest.mark.parametrize("settings_overrides, make, expected", [
    ({}, lambda: mint_token(secret=OTHER_SECRET, ttl_seconds=60), "bad signature"),
    ({}, _expired, "token expired"),
    ({}, lambda: unsigned({"alg": "none", "typ": "JWT"}, {"projects": "*", "exp": 4_000_000_000}) + ".",
     "unsupported algorithm"),
    ({"jwt_audience": "autopm-realtime"}, lambda: token(audience="another-service"), "wrong audience"),
    ({"jwt_audience": "autopm-realtime"}, lambda: token(), "missing aud"),
], indirect=["settings_overrides"], ids=["forged", "expired", "alg-none", "wrong-audience", "no-audience"])
async def test_refused_tokens_are_401_with_the_reason(port, http, make, expected):
    refused = make()
    response = await get(http, port, "/api/v1/events", bearer(refused))
    assert (response.code, reason(response)) == (401, expected)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    error = await ws_refusal(port, headers=bearer(refused))
    assert (error.code, reason(error.response)) == (401, expected)
    sse = await get(http, port, f"/api/v1/sse/events?token={refused}")
    assert (sse.code, reason(sse)) == (401, expected)


@with_settings(jwt_audience="autopm-realtime")
async def test_a_token_for_our_audience_is_accepted(port, http):
    headers = bearer(token(audience="autopm-realtime"))
    assert (await get(http, port, "/api/v1/events", headers)).code == 200
    await WsClient.connected(port, headers=headers)


async def test_an_rs256_server_refuses_hs256_signed_with_its_public_key(tmp_path, http):
    """HS/RS confusion: the attacker knows the public key and uses it as an HMAC secret."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    (tmp_path / "public.pem").write_bytes(public)
    settings = Settings(jwt_public_key=str(tmp_path / "public.pem"), heartbeat=30.0)
    forged = hs256_by_hand({"projects": "*", "publish": True, "exp": 4_000_000_000}, public)
    genuine = mint_token(private_key=private, projects="*", publish=True, ttl_seconds=60)
    async with serving(settings) as (service, port):
        assert service.verifier.algorithm == "RS256"
        response = await publish(http, port, file_change(), headers=bearer(forged))
        assert (response.code, reason(response)) == (401, "unsupported algorithm")
        error = await ws_refusal(port, headers=bearer(forged))
        assert (error.code, reason(error.response)) == (401, "unsupported algorithm")
        assert (await get(http, port, "/api/v1/events", bearer(forged))).code == 401
        # The genuine RS256 token works everywhere the forged one did not.
        assert (await publish(http, port, file_change(), headers=bearer(genuine))).code == 202
        assert (await get(http, port, "/api/v1/events", bearer(genuine))).code == 200
        await WsClient.connected(port, headers=bearer(genuine))


# --- scope ---------------------------------------------------------------------------------------

def only_a() -> dict[str, str]:
    return bearer(token(projects=["a"]))


async def test_websocket_subscribe_beyond_the_projects_is_forbidden_and_the_connection_stays(port, http):
    ws, _ = await WsClient.connected(port, headers=only_a())
    await ws.send({"type": "subscribe", "project_id": "b"})
    error = await ws.receive_type("error")
    assert error["code"] == "forbidden" and "'b'" in error["message"]
    await ws.send({"type": "ping", "id": 1})
    assert (await ws.receive_type("pong"))["id"] == 1             # still open

    assert (await ws.subscribe(project_id="a"))["project_id"] == "a"   # its own project is fine
    confirmed = await ws.subscribe()                                 # every project it may see
    assert confirmed["project_id"] is None
    assert (await publish(http, port, [file_change("b.py", project="b"), file_change("a.py", project="a"),
                                       file_change("m.py")], headers=publisher())).code == 202
    [event] = await ws.events(1)                                     # b's event, first, is not sent
    assert (event["project_id"], event["data"]["file_path"]) == ("a", "a.py")
    await ws.expect_silence(0.2)                                     # nor is my-project's


async def test_sse_beyond_the_projects_is_403_and_without_a_project_sees_only_its_own(port, http):
    response = await get(http, port, "/api/v1/sse/events?project_id=b", only_a())
    assert (response.code, reason(response)) == (403, "token does not grant project 'b'")

    sse, established = await SseClient.connected(port, headers=only_a())
    assert established["data"]["project_id"] is None
    await publish(http, port, [file_change("b.py", project="b"), file_change("a.py", project="a")],
                  headers=publisher())
    [message] = await sse.events(1)
    assert message["data"]["project_id"] == "a"


async def test_a_resume_replays_only_the_tokens_projects(port, http):
    first = json.loads((await publish(http, port, file_change("start.py", project="a"),
                                      headers=publisher())).body)["id"]
    await publish(http, port, [file_change("b.py", project="b"), file_change("a.py", project="a")],
                  headers=publisher())
    ws, _ = await WsClient.connected(port, headers=only_a())
    confirmed = await ws.subscribe(last_event_id=first)
    assert (confirmed["recovered"], confirmed["replayed"]) == (True, 1)
    [replayed] = await ws.events(1)
    assert (replayed["project_id"], replayed["data"]["file_path"]) == ("a", "a.py")
    sse, _ = await SseClient.connected(port, f"?last_event_id={first}", headers=only_a())
    [replayed] = await sse.events(1)
    assert replayed["data"]["data"]["file_path"] == "a.py"
    await publish(http, port, file_change("live.py", project="a"), headers=publisher())
    assert (await sse.events(1))[0]["data"]["data"]["file_path"] == "live.py"   # not b.py before it
    since = json.loads((await get(http, port, f"/api/v1/events?since={first}", only_a())).body)
    assert [e["data"]["file_path"] for e in since["events"]] == ["a.py", "live.py"]


async def test_history_and_projects_show_only_the_tokens_projects(port, http):
    await publish(http, port, [file_change("b.py", project="b"), file_change("a.py", project="a"),
                               risk("late", project="b")], headers=publisher())
    history = json.loads((await get(http, port, "/api/v1/events", only_a())).body)
    assert [(e["project_id"], e["type"]) for e in history["events"]] == [("a", "file_change")]
    refused = await get(http, port, "/api/v1/events?project_id=b", only_a())
    assert (refused.code, reason(refused)) == (403, "token does not grant project 'b'")

    everything = json.loads((await get(http, port, "/api/v1/projects", publisher())).body)
    assert {p["id"] for p in everything["projects"]} == {"my-project", "a", "b"}
    mine = json.loads((await get(http, port, "/api/v1/projects", only_a())).body)
    assert [p["id"] for p in mine["projects"]] == ["a"]


async def test_a_token_without_projects_sees_no_project(port, http):
    headers = bearer(mint_token(secret=SECRET, ttl_seconds=60, projects=[]))
    await publish(http, port, file_change(), headers=publisher())
    assert json.loads((await get(http, port, "/api/v1/events", headers)).body)["events"] == []
    assert json.loads((await get(http, port, "/api/v1/projects", headers)).body)["projects"] == []


async def test_event_types_scope(port, http):
    headers = bearer(token(event_types=["risk_alert"]))
    ws, _ = await WsClient.connected(port, headers=headers)
    await ws.send({"type": "subscribe", "event_types": ["file_change"]})
    error = await ws.receive_type("error")
    assert error["code"] == "forbidden" and "file_change" in error["message"]

    confirmed = await ws.subscribe()
    assert confirmed["event_types"] == ["risk_alert"]
    await publish(http, port, [file_change(), risk("disk full")], headers=publisher())
    [event] = await ws.events(1)
    assert event["type"] == "risk_alert"

    response = await get(http, port, "/api/v1/sse/events?event_types=file_change", headers)
    assert response.code == 403 and "file_change" in reason(response)
    history = json.loads((await get(http, port, "/api/v1/events", headers)).body)
    assert [e["type"] for e in history["events"]] == ["risk_alert"]


# --- publishing ----------------------------------------------------------------------------------

async def test_publishing_needs_a_token_that_allows_it_for_that_project(port, http):
    reader = await publish(http, port, file_change(project="a"), headers=bearer(token(projects=["a"])))
    assert (reader.code, reason(reader)) == (403, "this token does not allow publishing")
    a_publisher = bearer(token(projects=["a"], publish=True))
    elsewhere = await publish(http, port, file_change(project="b"), headers=a_publisher)
    assert (elsewhere.code, reason(elsewhere)) == (403, "token does not grant project 'b'")
    mixed = await publish(http, port, [file_change(project="a"), file_change(project="b")],
                          headers=a_publisher)
    assert mixed.code == 403 and json.loads(mixed.body)["error"]["index"] == 1
    types = bearer(token(publish=True, event_types=["risk_alert"]))
    assert (await publish(http, port, file_change(), headers=types)).code == 403
    accepted = await publish(http, port, file_change(project="a"), headers=a_publisher)
    assert accepted.code == 202
    history = json.loads((await get(http, port, "/api/v1/events", publisher())).body)
    assert [e["id"] for e in history["events"]] == [json.loads(accepted.body)["id"]]   # the refused: none


@with_settings(publish_token=PUBLISH_TOKEN)
async def test_the_static_publish_token_works_alongside_jwt(port, http):
    assert (await publish(http, port, file_change("static.py"), headers=bearer(PUBLISH_TOKEN))).code == 202
    assert (await publish(http, port, file_change("jwt.py"), headers=publisher())).code == 202
    assert (await publish(http, port, file_change(), headers=bearer("wrong-" + PUBLISH_TOKEN))).code == 401
    # It is a publish token only: reading still needs a JWT.
    assert (await get(http, port, "/api/v1/events", bearer(PUBLISH_TOKEN))).code == 401
    history = json.loads((await get(http, port, "/api/v1/events", publisher())).body)
    assert [e["data"]["file_path"] for e in history["events"]] == ["static.py", "jwt.py"]


# --- expiry --------------------------------------------------------------------------------------

def short_lived(at_least: float = 1.0) -> tuple[str, float]:
    """A token that expires between `at_least` and `at_least + 1` seconds from now (`exp` is whole
    seconds), and its expiry time."""
    now = time.time()
    expires = math.ceil(now + at_least)
    return token(ttl_seconds=expires - now, now=now), expires


async def test_connections_end_when_their_token_expires_and_a_fresh_token_reconnects(port, http, service):
    value, expires = short_lived()
    ws, _ = await WsClient.connected(port, headers=bearer(value))
    await ws.subscribe()
    sse, _ = await SseClient.connected(port, f"?token={value}")
    assert time.time() < expires
    assert await ws.closed(timeout=4) == (4001, "token expired")
    await sse.end_of_stream(timeout=4)
    assert time.time() >= expires - 0.05   # not before the token ran out
    await eventually(lambda: service.connection_limiter.total == 0 and not service.hub.connections())

    response = await get(http, port, "/api/v1/events", bearer(value))
    assert (response.code, reason(response)) == (401, "token expired")
    assert (await ws_refusal(port, headers=bearer(value))).code == 401

    fresh = token()
    ws, _ = await WsClient.connected(port, headers=bearer(fresh))
    await ws.subscribe()
    sse, _ = await SseClient.connected(port, f"?token={fresh}")
    await publish(http, port, risk("after"), headers=publisher())
    assert (await ws.events(1))[0]["data"]["message"] == "after"
    assert (await sse.events(1))[0]["data"]["data"]["message"] == "after"


# --- the token command ---------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=WAIT, env=environment())


async def test_the_token_command_mints_a_token_the_server_accepts(port, http):
    done = run_cli("token", "--secret", SECRET, "--project", "a", "--ttl", "1h", "--publish")
    assert done.returncode == 0, done.stderr
    minted = done.stdout.strip()
    assert minted.count(".") == 2 and "\n" not in minted
    assert (await publish(http, port, file_change(project="a"), headers=bearer(minted))).code == 202
    assert (await publish(http, port, file_change(project="b"), headers=bearer(minted))).code == 403
    projects = json.loads((await get(http, port, "/api/v1/projects", bearer(minted))).body)["projects"]
    assert [p["id"] for p in projects] == ["a"]


@pytest.mark.parametrize("args, message", [
    (["--secret", SECRET, "--ttl", "forever"], "invalid TTL 'forever'"),
    (["--secret", SECRET, "--ttl", "0"], "invalid TTL '0'"),
    (["--secret", "too-short"], "below the minimum recommended length of 32 bytes"),
])
def test_the_token_command_refuses_a_bad_ttl_or_a_short_secret(args, message):
    done = run_cli("token", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr and done.stderr.startswith("autopm-realtime token: ")
