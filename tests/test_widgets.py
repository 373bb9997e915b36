"""The notebook side (jupyter_ext): the progress dashboard and stream_events against live servers, asserted
on the widget models a browser renders; and finding the server (arguments, environment, real Jupyter
servers and a kernel one of them started)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from tornado.httpclient import AsyncHTTPClient

from autopm_realtime.client import AccessRefused, subscribe
from autopm_realtime.config import ProjectSpec, Settings
from autopm_realtime.tokens import mint_token
from jupyter_ext.discovery import (ServerInfo, ServerNotFound, current_kernel_id, find_jupyter_server,
                                   find_or_start_server, hub_problem, resolve_server, running_servers,
                                   server_for_kernel, terminate)
from jupyter_ext.stream import publish_events, stream_events
from jupyter_ext.widgets import ProgressDashboard
from support import (environment, eventually, file_change, free_port, progress, running_service, subscribed,
                     with_settings)

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}
HOSTILE = "<img src=x onerror=alert(1)>.py"
WAIT = 5.0


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


async def publish(http: AsyncHTTPClient, port: int, *events: dict[str, Any]) -> list[str]:
    response = await http.fetch(base_url(port) + "api/v1/events", method="POST", body=json.dumps(events),
                                headers={"Content-Type": "application/json"}, raise_error=False)
    assert response.code == 202, response.body
    return json.loads(response.body)["ids"]


def commit(event: str, changes: int, project: str = "my-project", **fields: Any) -> dict[str, Any]:
    return {"type": "auto_commit", "project_id": project,
            "data": {"event": event, "changes_count": changes, **fields}}


def alert(rule: str, state: str, message: str, severity: str = "high",
          project: str = "my-project") -> dict[str, Any]:
    if state == "cleared":
        severity, message = "low", f"Resolved: {message}"
    return {"type": "risk_alert", "project_id": project,
            "data": {"severity": severity, "message": message, "state": state, "rule": rule,
                     "alert_key": rule}}


@contextlib.asynccontextmanager
async def following(port: int, project: str = "my-project",
                    **options: Any) -> AsyncIterator[ProgressDashboard]:
    dashboard = ProgressDashboard.follow(project, url=base_url(port), **{**FAST, **options})
    try:
        yield dashboard
    finally:
        dashboard.close()
        await dashboard.wait_stopped()


def paths(dashboard: ProgressDashboard) -> list[str]:
    return [path for _, path, _ in dashboard.recent_files]


# --- the dashboard -------------------------------------------------------------------------------

async def test_dashboard_shows_progress_files_the_latest_commit_and_risks(port, http, service):
    async with following(port) as dashboard:
        await publish(http, port, progress(75.5, 15, 20),
                      *(file_change(f"src/module{i}.py", change="created") for i in range(7)),
                      commit("start", 3), commit("result", 3, success=True, sha="0123456789abcdef0123"),
                      alert("overdue", "raised", "2 tasks overdue"),
                      alert("stalled", "raised", "Progress stalled", severity="medium"))
        await dashboard.wait_for(lambda d: "Progress stalled" in d.risks.value)
        assert dashboard.progress.value == 75.5
        assert dashboard.progress_label.value == "75.5% — 15 of 20 tasks done"
        files = dashboard.files.value
        assert "<b>7</b> file changes" in files
        assert paths(dashboard) == [f"src/module{i}.py" for i in range(2, 7)]   # the last five
        assert "module0" not in files and "module1" not in files
        assert files.index("src/module6.py") < files.index("src/module2.py")   # latest first
        assert "&#10004; <code>0123456789ab</code>, 3 changes" in dashboard.commit.value
        assert "in progress" not in dashboard.commit.value
        risks = dashboard.risks.value
        assert risks.index("HIGH") < risks.index("2 tasks overdue") < risks.index("MEDIUM")

        await publish(http, port, alert("overdue", "cleared", "2 tasks overdue"), commit("start", 2),
                      progress(100.0, 20, 20))
        await dashboard.wait_for(lambda d: d.progress.value == 100.0)
        assert "overdue" not in dashboard.risks.value and "Resolved" not in dashboard.risks.value
        assert list(dashboard.alerts) == ["stalled"] and "Progress stalled" in dashboard.risks.value
        assert dashboard.progress.bar_style == "success"
        assert "0123456789ab" in dashboard.commit.value
        assert "a snapshot of 2 changes is in progress" in dashboard.commit.value

        await publish(http, port, commit("error", 2, success=False, reason="index.lock exists"),
                      alert("stalled", "cleared", "Progress stalled"))
        await dashboard.wait_for(lambda d: "failed" in d.commit.value)
        assert "&#10008; failed: index.lock exists, 2 changes" in dashboard.commit.value
        assert dashboard.risks.value == "<div><b>Risks:</b> none raised</div>"
        assert dashboard.event_count == 17


async def test_risk_alerts_are_bounded_and_a_raised_alert_replaces_its_key(port, http, service):
    async with following(port, max_alerts=3) as dashboard:
        await publish(http, port, *(alert(f"rule{i}", "raised", f"problem {i}") for i in range(5)),
                      alert("rule3", "raised", "problem 3, now worse", severity="critical"),
                      {"type": "risk_alert", "project_id": "my-project",   # a publisher's own alert
                       "data": {"severity": "low", "message": "plain alert"}})
        await dashboard.wait_for(lambda d: "plain alert" in d.risks.value)
        assert list(dashboard.alerts) == ["rule4", "rule3", "plain alert"]
        risks = dashboard.risks.value
        assert risks.index("CRITICAL") < risks.index("problem 3, now worse") < risks.index("problem 4")
        assert "problem 3<" not in risks and "problem 2" not in risks


async def test_strings_from_events_are_escaped(port, http, service):
    async with following(port) as dashboard:
        await publish(http, port, file_change(HOSTILE, change="created"),
                      {"type": "file_change", "project_id": "my-project",
                       "data": {"file_path": "b.py", "change_type": "moved",
                                "old_path": "<script>x</script>"}},
                      commit("error", 1, success=False, reason="<b>bold</b>"),
                      alert("x", "raised", "<svg onload=alert(1)>", severity="high"))
        await dashboard.wait_for(lambda d: "svg" in d.risks.value)
        shown = dashboard.files.value + dashboard.commit.value + dashboard.risks.value
        for raw in ("<img", "<script", "<svg", "<b>bold"):
            assert raw not in shown
        assert "&lt;img src=x onerror=alert(1)&gt;.py" in dashboard.files.value
        assert "(from &lt;script&gt;x&lt;/script&gt;)" in dashboard.files.value
        assert "&lt;b&gt;bold&lt;/b&gt;" in dashboard.commit.value
        assert "&lt;svg onload=alert(1)&gt;" in dashboard.risks.value
        assert paths(dashboard)[0] == HOSTILE   # the state keeps the real name


async def test_starts_from_recent_history_and_the_servers_latest_progress(port, http, service):
    await publish(http, port, progress(40.0, 2, 5), alert("overdue", "raised", "late"),
                  *(file_change(f"old{i}.py") for i in range(3)),
                  file_change("elsewhere.py", project="other"))
    async with following(port, history=3) as dashboard:
        await dashboard.wait_for(lambda d: "old2.py" in d.files.value)
        assert paths(dashboard) == ["old0.py", "old1.py", "old2.py"]   # the project's last 3 events
        assert dashboard.alerts == {}                                  # older than those
        assert dashboard.progress.value == 40.0                        # from /api/v1/projects
        await publish(http, port, file_change("new.py"))
        await dashboard.wait_for(lambda d: "new.py" in d.files.value)
        assert paths(dashboard) == ["old0.py", "old1.py", "old2.py", "new.py"]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_dropped_connection_resumes_without_missing_or_doubling_events(port, http, service,
                                                                              transport):
    async with following(port, transport=transport) as dashboard:
        await eventually(lambda: len(subscribed(service)) == 1)
        await publish(http, port, file_change("a.py"))
        await dashboard.wait_for(lambda d: "a.py" in d.files.value)
        for connection in service.hub.connections():   # idle between events, dropped by the server
            connection.transport.close_connection(4008, "slow consumer")
        await publish(http, port, file_change("b.py"), progress(50.0, 1, 2), file_change("c.py"))
        await dashboard.wait_for(lambda d: "c.py" in d.files.value)
        await publish(http, port, file_change("d.py"))
        await dashboard.wait_for(lambda d: "d.py" in d.files.value)
        assert paths(dashboard) == ["a.py", "b.py", "c.py", "d.py"]
        assert "<b>4</b> file changes" in dashboard.files.value
        assert (dashboard.event_count, dashboard.reset_count, dashboard.progress.value) == (5, 0, 50.0)
        assert service.hub.stats.resumes_recovered == 1


async def test_a_server_restart_resets_the_alerts_and_reloads_what_the_new_server_has(io_loop, http,
                                                                                     tmp_path):
    settings = Settings(port=free_port(), projects=(ProjectSpec(tmp_path, "my-project"),))
    dashboard = None
    try:
        async with running_service(settings):
            dashboard = ProgressDashboard.follow("my-project", url=base_url(settings.port), **FAST)
            await publish(http, settings.port, alert("overdue", "raised", "late"), file_change("a.py"))
            await dashboard.wait_for(lambda d: "a.py" in d.files.value and "late" in d.risks.value)
        async with running_service(settings):   # a new epoch: the old ids mean nothing here
            await publish(http, settings.port, alert("stalled", "raised", "stuck"), file_change("b.py"))
            await dashboard.wait_for(lambda d: "b.py" in d.files.value)
            assert dashboard.reset_count == 1
            assert list(dashboard.alerts) == ["stalled"] and "late" not in dashboard.risks.value
            assert paths(dashboard) == ["a.py", "b.py"] and dashboard.file_change_count == 2
            await publish(http, settings.port, file_change("c.py"))
            await dashboard.wait_for(lambda d: "c.py" in d.files.value)
            assert dashboard.file_change_count == 3
    finally:
        if dashboard is not None:
            dashboard.close()
            await dashboard.wait_stopped()


async def test_a_dashboard_started_before_its_server_catches_up_once_it_is_there(io_loop, http, tmp_path):
    settings = Settings(port=free_port(), projects=(ProjectSpec(tmp_path, "my-project"),))
    dashboard = ProgressDashboard.follow("my-project", url=base_url(settings.port), **FAST)
    try:
        await asyncio.sleep(0.05)   # let it find nobody listening
        async with running_service(settings):
            await publish(http, settings.port, progress(30.0, 3, 10), file_change("a.py"))
            await dashboard.wait_for(lambda d: "a.py" in d.files.value)
            assert (dashboard.progress.value, dashboard.file_change_count) == (30.0, 1)
    finally:
        dashboard.close()
        await dashboard.wait_stopped()


async def test_stop_and_close_end_the_background_task_and_its_connection(port, http, service):
    dashboard = ProgressDashboard.follow("my-project", url=base_url(port))
    await eventually(lambda: len(subscribed(service)) == 1)
    dashboard.stop()
    await dashboard.wait_stopped()
    assert dashboard.task.done() and dashboard.status.value == "stopped"
    await eventually(lambda: not service.hub.connections())
    await publish(http, port, file_change("after.py"))
    await asyncio.sleep(0.05)   # give a (wrongly) running task the chance to apply it
    assert dashboard.file_change_count == 0 and dashboard.comm is not None   # stopped, still shown

    closed = ProgressDashboard.follow("my-project", url=base_url(port))
    await eventually(lambda: len(subscribed(service)) == 1)
    closed.close()
    await closed.wait_stopped()
    assert closed.task.done() and closed.comm is None and closed.progress.comm is None
    await eventually(lambda: not service.hub.connections())
    dashboard.close()


async def test_an_unusable_server_is_shown_and_raised(port, service):
    dashboard = ProgressDashboard.follow("my-project", url=base_url(port) + "not-here/")
    try:
        with pytest.raises(ServerNotFound, match="HTTP 404, no autopm hub"):
            await dashboard.wait_for(lambda d: False)
        assert dashboard.status.value.startswith("error: ") and dashboard.task.done()
    finally:
        dashboard.close()


def test_follow_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="running asyncio loop"):
        ProgressDashboard.follow("my-project", url="http://127.0.0.1:1/")


# --- stream_events -------------------------------------------------------------------------------

async def take(events: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(events.__anext__(), WAIT) for _ in range(count)]


async def test_stream_events_yields_history_then_live_events(port, http, service):
    ids = await publish(http, port, file_change("a.py"), progress(10.0, 1, 10), file_change("b.py"),
                        file_change("c.py", project="other"))
    async with contextlib.aclosing(stream_events("my-project", "file_change", url=base_url(port),
                                                 history=2, **FAST)) as events:
        history = await take(events, 2)
        assert [e["id"] for e in history] == [ids[0], ids[2]]
        live = await publish(http, port, progress(20.0, 2, 10), file_change("d.py"))
        assert [e["id"] for e in await take(events, 1)] == [live[1]]


async def spy_on_history(monkeypatch, service, http, port, event: dict[str, Any]) -> list[str]:
    """Publish `event` right after the server first reads its history for a client: between the
    stream's reading its starting position and its subscription."""
    original, published = service.broker.history, []

    async def history(*args: Any, **kwargs: Any):
        page = await original(*args, **kwargs)
        if not published:
            published.extend(await publish(http, port, event))
        return page

    monkeypatch.setattr(service.broker, "history", history)
    return published


@pytest.mark.parametrize("server_had_events", [True, False])
async def test_stream_events_misses_nothing_published_before_its_subscription(
        port, http, service, monkeypatch, server_had_events):
    if server_had_events:
        await publish(http, port, file_change("before.py"))
    gap = await spy_on_history(monkeypatch, service, http, port, file_change("gap.py"))
    async with contextlib.aclosing(stream_events("my-project", url=base_url(port), **FAST)) as events:
        assert [e["id"] for e in await take(events, 1)] == gap   # with nothing published after it
        live = await publish(http, port, file_change("live.py"))
        assert [e["id"] for e in await take(events, 1)] == live


async def test_stream_events_after_a_restart_yields_reset_then_the_new_servers_events(io_loop, http,
                                                                                   tmp_path):
    settings = Settings(port=free_port(), projects=(ProjectSpec(tmp_path, "my-project"),))
    async with contextlib.aclosing(stream_events(url=base_url(settings.port), **FAST)) as events:
        async with running_service(settings) as service:
            first = asyncio.ensure_future(events.__anext__())
            await eventually(lambda: len(subscribed(service)) == 1)
            await publish(http, settings.port, file_change("before.py"))
            assert (await asyncio.wait_for(first, WAIT))["data"]["file_path"] == "before.py"
        async with running_service(settings) as service:
            ids = await publish(http, settings.port, file_change("x.py"), file_change("y.py"))
            reset, *after = await take(events, 3)
            assert reset["type"] == "reset"
            assert [e["id"] for e in after] == ids   # each once, whether replayed or live
            more = await publish(http, settings.port, file_change("z.py"))
            assert [e["id"] for e in await take(events, 1)] == more


SECRET = "widgets-test-secret-" + "w" * 32
PUBLISH_TOKEN = "widgets-publish-token-" + "p" * 16


@with_settings(jwt_secret=SECRET, publish_token=PUBLISH_TOKEN)
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_stream_and_publish_events_take_a_standalone_servers_tokens(port, service, monkeypatch,
                                                                         transport):
    reader = mint_token(secret=SECRET, projects=["my-project"], ttl_seconds=60)
    publisher = mint_token(secret=SECRET, projects=["my-project"], publish=True, ttl_seconds=60)
    monkeypatch.setenv("AUTOPM_URL", base_url(port))
    monkeypatch.setenv("AUTOPM_TOKEN", reader)
    async with contextlib.aclosing(stream_events("my-project", transport=transport, **FAST)) as events:
        first = asyncio.ensure_future(events.__anext__())
        await eventually(lambda: len(subscribed(service)) == 1)
        ids = await publish_events(file_change("jwt.py"), token=publisher)          # a JWT that may publish
        ids += await publish_events([file_change("static.py")], url=base_url(port),  # the publish token
                                    token=PUBLISH_TOKEN)
        received = [await asyncio.wait_for(first, WAIT), *await take(events, 1)]
        assert [(e["id"], e["data"]["file_path"]) for e in received] == \
            list(zip(ids, ["jwt.py", "static.py"]))
        assert {c.transport.name for c in service.hub.connections()} == {transport}


@with_settings(jwt_secret=SECRET)
async def test_stream_events_without_a_token_is_refused_at_once(port, service):
    events = stream_events(url=base_url(port), max_retries=100, **FAST)
    with pytest.raises(PermissionError, match="HTTP 401: a token is required"):   # not after 100 retries
        await take(events, 1)


# --- finding the server: arguments and the environment -------------------------------------------

def test_an_explicit_url_wins_over_the_environment():
    environ = {"AUTOPM_URL": "http://127.0.0.1:9/env/", "AUTOPM_TOKEN": "from-env"}
    server = resolve_server("http://127.0.0.1:8000", environ=environ)
    assert (server.url, server.token, server.source) == ("http://127.0.0.1:8000/", "from-env", "argument")
    server = resolve_server("http://127.0.0.1:8888/autopm/", "secret", environ=environ)
    assert (server.url, server.token) == ("http://127.0.0.1:8888/autopm/", "secret")
    assert server.headers() == {"Authorization": "Bearer secret"}   # Jupyter takes it too
    assert "secret" not in repr(server)


def test_the_environment_names_the_server(monkeypatch):
    monkeypatch.setenv("AUTOPM_URL", "http://127.0.0.1:8888/autopm")
    monkeypatch.setenv("AUTOPM_TOKEN", "t0k")
    server = resolve_server()
    assert server == ServerInfo("http://127.0.0.1:8888/autopm/", "t0k", "environment")
    monkeypatch.setenv("AUTOPM_TOKEN", "")
    assert resolve_server().headers() == {}


def test_bad_urls_are_refused():
    for url in ("127.0.0.1:8000", "ws://127.0.0.1:8000/", "http:///x", "http://h/?token=x"):
        with pytest.raises(ValueError, match="server URL"):
            resolve_server(url)


def test_nothing_found_says_how_to_give_a_url(tmp_path):
    with pytest.raises(ServerNotFound, match="no running Jupyter server found in .*AUTOPM_URL"):
        resolve_server(environ={}, runtime_dir=str(tmp_path))
    assert current_kernel_id() is None   # this process is no kernel


def test_find_or_start_server_uses_a_given_url_and_starts_one_only_when_nothing_is_found(tmp_path,
                                                                                        monkeypatch):
    given, started = find_or_start_server("http://127.0.0.1:1/")
    assert (given.url, started) == ("http://127.0.0.1:1/", None)   # used as it is, even unreachable
    monkeypatch.delenv("AUTOPM_URL", raising=False)
    monkeypatch.delenv("AUTOPM_TOKEN", raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))   # where no Jupyter server runs
    server, started = find_or_start_server()
    try:
        assert server.source == "standalone" and "no running Jupyter server" in started.reason
        with urllib.request.urlopen(server.url + "api/v1/projects", timeout=WAIT) as response:
            assert [p["id"] for p in json.load(response)["projects"]] == ["demo"]
    finally:
        assert started.stop() == 0
    assert not Path(started.cleanup).exists()


# --- finding the server: real Jupyter servers ----------------------------------------------------

class JupyterServer:
    """`jupyter server` in a subprocess: free port, its own token, root and runtime directories."""

    def __init__(self, tmp: Path, name: str, runtime_dir: Path, *extra_args: str) -> None:
        self.token = f"token-{name}"
        root, config = tmp / name / "root", tmp / name / "config"
        root.mkdir(parents=True)
        config.mkdir()
        self.log = (tmp / name / "log").open("w")
        env = environment(JUPYTER_RUNTIME_DIR=str(runtime_dir), JUPYTER_CONFIG_DIR=str(config),
                          IPYTHONDIR=str(tmp / name / "ipython"))
        self.popen = subprocess.Popen(
            # a free port, not --port=0, which Jupyter Server reports as port 0 before 2.20
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={free_port()}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", *extra_args], stdout=self.log, stderr=subprocess.STDOUT,
            env=env)
        self.runtime_dir = runtime_dir
        self.info: dict[str, Any] = {}

    def wait_listed(self, timeout: float = 30.0) -> dict[str, Any]:
        """Its entry in `list_running_servers`, once it has written it."""
        deadline = time.monotonic() + timeout
        while not self.info:
            assert self.popen.poll() is None, f"jupyter server exited: {self.log.name}"
            assert time.monotonic() < deadline, f"jupyter server not listed in time: {self.log.name}"
            self.info = next((info for info in running_servers(str(self.runtime_dir))
                              if info["pid"] == self.popen.pid), {})
            time.sleep(0.05)
        return self.info

    def request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.info["url"] + path, method=method, data=b"{}"
                                         if method == "POST" else None,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop(self) -> None:
        terminate(self.popen)
        self.log.close()


@pytest.fixture
def jupyter_servers(tmp_path) -> Iterator[tuple[JupyterServer, JupyterServer]]:
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir()
    servers = (JupyterServer(tmp_path, "a", runtime_dir),   # without the hub, and with it:
               JupyterServer(tmp_path, "b", runtime_dir,
                             "--ServerApp.jpserver_extensions={'jupyter_ext': True}",
                             "--AutoPMRealtime.no_watch=True"))
    try:
        for server in servers:
            server.wait_listed()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def run_in_kernel(connection_file: Path, code: str) -> str:
    """Execute `code` in a running kernel through its connection file; what it printed. (The async
    client runs on the test's loop; the blocking one would leave loops of its own open.)"""
    from jupyter_client.asynchronous import AsyncKernelClient

    client = AsyncKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels()
    printed: list[str] = []
    try:
        await client.wait_for_ready(timeout=20)
        reply = await client.execute_interactive(code, timeout=20, output_hook=lambda message: printed.append(
            message["content"].get("text", "")) if message["msg_type"] == "stream" else None)
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(printed)


IN_KERNEL = """
import json
from jupyter_ext.discovery import current_kernel_id, resolve_server
from jupyter_ext.widgets import ProgressDashboard, publish_events

server = resolve_server()
dashboard = ProgressDashboard.follow("in-kernel")
await publish_events([
    {"type": "file_change", "project_id": "in-kernel",
     "data": {"file_path": "a.py", "change_type": "created"}},
    {"type": "progress_update", "project_id": "in-kernel",
     "data": {"progress_percentage": 42.0, "completed_tasks": 21, "total_tasks": 50}}])
await dashboard.wait_for(lambda d: d.progress.value == 42.0, timeout=10)
dashboard.close()
await dashboard.wait_stopped()
print(json.dumps([current_kernel_id(), server.url, server.token, server.source, dashboard.progress.value,
                  dashboard.files.value.split(",")[0].removeprefix("<div>")]))
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_jupyter_server_that_owns_the_kernel_is_found(jupyter_servers):
    a, b = jupyter_servers
    runtime_dir = str(b.runtime_dir)
    assert {info["pid"] for info in running_servers(runtime_dir)} == {a.popen.pid, b.popen.pid}
    kernel_id = b.request("POST", "api/kernels")["id"]

    assert server_for_kernel(kernel_id, runtime_dir=runtime_dir)["pid"] == b.popen.pid
    assert find_jupyter_server(kernel_id, runtime_dir=runtime_dir)["pid"] == b.popen.pid
    server = resolve_server(environ={}, runtime_dir=runtime_dir, kernel_id=kernel_id)
    assert (server.url, server.token, server.source) == (b.info["url"] + "autopm/", b.token, "jupyter")
    assert resolve_server(token="mine", environ={}, runtime_dir=runtime_dir,
                          kernel_id=kernel_id).token == "mine"
    with pytest.raises(ServerNotFound, match="2 Jupyter servers are running .* none of them has kernel"):
        find_jupyter_server("no-such-kernel", runtime_dir=runtime_dir)

    assert "HTTP 404" in hub_problem(ServerInfo(a.info["url"] + "autopm/", a.token, "jupyter"))
    assert hub_problem(server) is None
    with pytest.raises(PermissionError, match="HTTP 403"):
        hub_problem(ServerInfo(server.url, "wrong", "jupyter"))
    with pytest.raises(AccessRefused, match="HTTP 403"):   # at once, over SSE after the WebSocket's 403
        await asyncio.wait_for(subscribe(server.url, token="wrong", max_retries=100, **FAST).__anext__(), WAIT)

    # Inside that kernel, with no arguments and no AUTOPM_URL: its own server, not the other one; and
    # a dashboard that follows a project through the extension with the token discovery found.
    printed = await run_in_kernel(b.runtime_dir / f"kernel-{kernel_id}.json", IN_KERNEL)
    assert json.loads(printed.splitlines()[-1]) == [kernel_id, b.info["url"] + "autopm/", b.token,
                                                    "jupyter", 42.0, "<b>1</b> file change"]

    a.stop()   # one server left: it is the one, whatever the kernel
    assert find_jupyter_server("no-such-kernel", runtime_dir=runtime_dir)["pid"] == b.popen.pid
    b.request("DELETE", f"api/kernels/{kernel_id}")
