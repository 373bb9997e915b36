"""The command line as a user runs it: `python -m autopm_realtime` in real subprocesses."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from typing import Any, Iterator

import pytest

from autopm_realtime.cli import describe
from autopm_realtime.config import OPTIONS
from support import SERVING, WAIT, Process, command, environment, file_change

pytestmark = pytest.mark.timeout(30)

def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=WAIT,
                          env=environment(), **kwargs)


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    """A server subprocess on a free port; yields its base URL."""
    process = Process("serve", "--port", "0", "--project", f"{tmp_path}=my-project")
    try:
        yield process.stderr_match(SERVING).group(1)
    finally:
        process.stop()


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=WAIT) as response:
        return json.load(response)


def post_event(base: str, body: Any) -> str:
    request = urllib.request.Request(base + "api/v1/events", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.load(response)["id"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- publish ---------------------------------------------------------------------------------

def test_publish_prints_the_id_and_the_event_is_kept(server):
    result = run("publish", "--url", server, "--type", "file_change", "--project-id", "my-project",
                 "--data", '{"file_path": "src/app.py", "change_type": "created"}')
    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    [event] = get_json(server + "api/v1/events")["events"]
    assert event["id"] == event_id
    assert (event["type"], event["data"]["file_path"]) == ("file_change", "src/app.py")


def test_publish_with_data_that_is_not_json_exits_2():
    result = run("publish", "--type", "file_change", "--project-id", "p", "--data", "{not json")
    assert result.returncode == 2
    assert "--data is not valid JSON" in result.stderr


def test_publish_of_an_invalid_event_prints_the_servers_reason(server):
    result = run("publish", "--url", server, "--type", "progress_update", "--project-id", "my-project",
                 "--data", '{"progress_percentage": 150, "completed_tasks": 1, "total_tasks": 2}')
    assert result.returncode != 0
    assert "400" in result.stderr
    assert "progress_percentage must be a number from 0 to 100" in result.stderr


def test_publish_to_an_unreachable_server_exits_1():
    url = f"http://127.0.0.1:{free_port()}"
    result = run("publish", "--url", url, "--type", "file_change", "--project-id", "p")
    assert result.returncode == 1
    assert f"cannot reach {url}" in result.stderr


# --- tail ------------------------------------------------------------------------------------

def start_tail(server: str, *args: str, token: str | None = None,
               env: dict[str, str] | None = None) -> Process:
    """Start `tail` and return once the server has its subscription (so no live event is missed).
    `token` reads the server's stats when JWT auth is on; `env` adds to tail's environment."""
    process = Process("tail", "--url", server, "--event-types", "file_change", *args,
                      env=environment(**(env or {})))
    stats = server + ("api/v1/sse/stats" if "--sse" in args else "api/v1/dashboard/ws/stats")
    deadline = time.monotonic() + WAIT
    try:
        while get_json(stats, token)["subscription_counts"]["file_change"] == 0:
            assert process.popen.poll() is None, f"tail exited: {process.remaining_stderr()}"
            assert time.monotonic() < deadline, "tail did not subscribe"
            time.sleep(0.02)
    except BaseException:
        process.stop()
        raise
    return process


@pytest.mark.parametrize("transport", [[], ["--sse"]], ids=["websocket", "sse"])
def test_tail_json_prints_each_event_as_one_json_line(server, transport):
    tail = start_tail(server, "--json", *transport)
    try:
        post_event(server, {"type": "progress_update", "project_id": "my-project",   # filtered out
                            "data": {"progress_percentage": 5, "completed_tasks": 1, "total_tasks": 20}})
        event_id = post_event(server, file_change("src/tail.py"))
        event = json.loads(tail.stdout_line())
        assert (event["id"], event["type"], event["data"]["file_path"]) == \
            (event_id, "file_change", "src/tail.py")
    finally:
        tail.stop()


def test_tail_prints_a_human_line_with_type_and_path(server):
    tail = start_tail(server)
    try:
        post_event(server, file_change("src/human.py", change="deleted"))
        line = tail.stdout_line()
        assert "my-project file_change: deleted src/human.py" in line
        assert not line.startswith("{")
    finally:
        tail.stop()


def test_tail_with_an_unknown_event_type_exits_2(server):
    result = run("tail", "--url", server, "--event-types", "no_such_type")
    assert result.returncode == 2
    assert "unknown event type 'no_such_type'" in result.stderr


def test_tail_gives_up_on_an_unreachable_server(tmp_path):
    result = run("tail", "--url", f"http://127.0.0.1:{free_port()}", "--max-retries", "0")
    assert result.returncode == 1
    assert "gave up" in result.stderr


@pytest.mark.parametrize("message, expected", [
    ({"type": "file_change", "project_id": "p", "timestamp": "T",
      "data": {"file_path": "b.py", "change_type": "moved", "old_path": "a.py"}},
     "T p file_change: moved b.py (from a.py)"),
    ({"type": "risk_alert", "project_id": "p", "timestamp": "T",
      "data": {"severity": "high", "message": "late"}}, "T p risk_alert: [high] late"),
    ({"type": "reset", "reason": "server restarted", "last_event_id": "x-1"},
     "-- position lost: server restarted; following live events from here"),
])
def test_describe(message, expected):
    assert describe(message) == expected


# --- serve -----------------------------------------------------------------------------------

def test_serve_refuses_a_public_host_without_a_publish_token():
    result = run("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--insecure" in result.stderr and "--publish-token" in result.stderr


def test_serve_honours_the_port_environment_variable(tmp_path):
    port = free_port()
    process = Process("serve", "--project", str(tmp_path), env=environment(AUTOPM_PORT=str(port)))
    try:
        url = process.stderr_match(SERVING).group(1)
        assert url == f"http://127.0.0.1:{port}/"
        assert get_json(url + "api/v1/health")["status"] == "ok"
    finally:
        process.stop()


@pytest.mark.parametrize("subcommand", ["serve", "tail", "publish"])
def test_help_lists_every_flag_with_its_default(subcommand):
    result = run(subcommand, "--help")
    assert result.returncode == 0
    text = result.stdout.split("options:", 1)[1]
    # One entry per flag: a line starting with "  -", with its wrapped help lines joined to it.
    entries = [" ".join(entry.split()) for entry in re.split(r"\n(?=  -)", text) if entry.strip()]
    flags = {entry.split()[0].rstrip(","): entry for entry in entries}
    if subcommand == "serve":
        assert {option.flag for option in OPTIONS} <= set(flags)
    for flag, entry in flags.items():
        if flag != "-h":
            assert "[default:" in entry or "(required)" in entry, entry
    if subcommand == "serve":
        assert "[default: 8000; env AUTOPM_PORT]" in flags["--port"]


def test_top_level_help_shows_the_serve_flags_too():
    """With no command the server runs, so `autopm-realtime --help` documents the server's flags."""
    result = run("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flag in result.stdout and option.env in result.stdout


def test_no_arguments_serves_the_current_directory_on_port_8000(tmp_path):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server binds: TIME_WAIT is fine
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("port 8000 is in use on this machine, so the default port cannot be tested")
    process = Process(cwd=tmp_path)
    try:
        try:
            url = process.stderr_match(SERVING).group(1)
        except AssertionError:
            if any("cannot listen" in line for line in process.seen):   # lost a race for it
                pytest.skip("port 8000 was taken by something else while the test ran")
            raise
        assert url == "http://127.0.0.1:8000/"
        [project] = get_json(url + "api/v1/projects")["projects"]
        assert project["id"] == tmp_path.name
    finally:
        process.stop()
