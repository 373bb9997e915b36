"""The Jupyter Server extension, end to end: real `jupyter server` processes, real HTTP and WebSocket.

Three servers start once for the module, side by side: one at `--ServerApp.base_url=/jh/` (every endpoint,
authentication, XSRF, origin, the file watcher; shut down with `POST /api/shutdown`), one at the default
base URL (stopped with SIGTERM) and one on a terminal (stopped with Ctrl-C twice). All of them run with
`ServerApp.allow_unauthenticated_access = False` and the extension enabled by the config file the
package installs (`jupyter-config/`), copied into a temporary `JUPYTER_CONFIG_DIR`.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import pty
import queue
import re
import secrets
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.tcpclient import TCPClient
from tornado.websocket import websocket_connect

from support import (ROOT, STRICT_ENV, SseClient, WsClient, environment, file_change, free_port, require,
                     terminate)

if importlib.util.find_spec("jupyter_server") is None:   # a [test] dependency; see setup.py
    if os.environ.get(STRICT_ENV) == "1":
        raise ImportError("jupyter_server is not installed (pip install -e '.[test]')")
    pytest.skip("jupyter_server is not installed", allow_module_level=True)

from jupyter_server.serverapp import ServerWebApplication  # noqa: E402

from autopm_realtime.client import subscribe  # noqa: E402
from autopm_realtime.config import ConfigError, ProjectSpec, Settings  # noqa: E402
from autopm_realtime.service import RealtimeService  # noqa: E402
from autopm_realtime.web.app import routes  # noqa: E402
from jupyter_ext.app import AutoPMRealtime, build_settings  # noqa: E402
from jupyter_ext.handlers import jupyter_routes  # noqa: E402

START_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0
SERVING = re.compile(r"autopm-realtime serving (http://\S+) \(projects: (.*)\)")
SHIPPED_CONFIG = ROOT / "jupyter-config" / "jupyter_server_config.d" / "jupyter_ext.json"
FOREIGN_ORIGIN = "https://evil.example"
# Nothing on stderr may match these, at any point of a server's life.
NOT_IN_LOG = re.compile(r"Traceback|JupyterServerAuthWarning|^\[E |Task was destroyed|Exception ignored|"
                        r"Warning:|never awaited|Unhandled error")

ENDPOINTS = ("", "api/v1/dashboard/ws/stats", "api/v1/sse/stats", "api/v1/events", "api/v1/projects",
             "api/v1/health")


# --- the servers ---------------------------------------------------------------------------------

def jupyter_environment(home: Path) -> dict[str, str]:
    """Jupyter's directories in `home`, with the extension enabled by the file the package installs."""
    config = home / "config"
    (config / "jupyter_server_config.d").mkdir(parents=True)
    shutil.copy(SHIPPED_CONFIG, config / "jupyter_server_config.d")
    return environment(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"),
                       JUPYTER_RUNTIME_DIR=str(home / "runtime"))


def git_repository(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "TODO.md").write_text("- [x] install\n- [ ] try the extension\n")
    return path


class JupyterServer:
    """`jupyter server` on a free port; threads collect its output so its pipes never fill up."""

    def __init__(self, home: Path, *args: str, base_url: str = "/", terminal: bool = False) -> None:
        home.mkdir(parents=True)
        self.root = git_repository(home / "project")
        self.token = secrets.token_hex(16)
        self.base_url = base_url
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        stdin: Any = subprocess.DEVNULL
        self._terminal = None
        if terminal:   # Jupyter asks before stopping on Ctrl-C only when stdin is a terminal
            self._terminal, stdin = pty.openpty()
        self.popen = subprocess.Popen(
            # a free port, not --port=0, which Jupyter Server reports as port 0 before 2.20
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={free_port()}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             f"--ServerApp.base_url={base_url}", "--ServerApp.allow_unauthenticated_access=False",
             # an unrelated extension that warns about its own handlers would hide ours
             "--ServerApp.jpserver_extensions={'jupyter_server_terminals': False}", *args],
            stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=jupyter_environment(home / "jupyter"), cwd=home)
        if terminal:
            os.close(stdin)
        threading.Thread(target=self._collect, daemon=True).start()
        self.url = ""       # http://127.0.0.1:PORT{base_url}autopm/
        self.port = 0

    def _collect(self) -> None:
        assert self.popen.stderr is not None
        with self.popen.stderr:
            for line in self.popen.stderr:
                self.stderr.append(line.rstrip("\n"))
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_until_serving(self) -> JupyterServer:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not serving within {START_TIMEOUT} s: {self.log}") from None
            if line is None:
                raise AssertionError(f"jupyter server exited ({self.popen.wait()}): {self.log}")
            match = SERVING.search(line)
            if match:
                self.port = int(re.search(r":(\d+)/", match.group(1)).group(1))
                self.url = f"http://127.0.0.1:{self.port}{self.base_url}autopm/"
                return self

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    def exit_code(self) -> int:
        try:
            return self.popen.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {EXIT_TIMEOUT} s after being stopped: {self.log}") from None

    def assert_clean_log(self) -> None:
        bad = [line for line in self.stderr if NOT_IN_LOG.search(line)]
        assert not bad, f"unexpected lines on stderr: {bad}\n--- full log:\n{self.log}"

    def kill(self) -> None:
        terminate(self.popen, EXIT_TIMEOUT)
        if self._terminal is not None:
            os.close(self._terminal)
            self._terminal = None


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The three servers, started side by side."""
    home = tmp_path_factory.mktemp("jupyter")
    started: dict[str, JupyterServer] = {}
    try:
        started["main"] = JupyterServer(home / "main", base_url="/jh/")
        started["sigterm"] = JupyterServer(home / "sigterm")
        started["ctrl_c"] = JupyterServer(home / "ctrl_c", terminal=True)
        for server in started.values():
            server.wait_until_serving()
        yield started
    finally:
        for server in started.values():
            server.kill()


@pytest.fixture
def jupyter(servers) -> JupyterServer:
    server = servers["main"]
    if server.popen.poll() is not None:
        pytest.fail(f"the module's server has exited already: {server.log}")
    return server


# --- clients ---------------------------------------------------------------------------------------

def token_header(server: JupyterServer) -> dict[str, str]:
    return {"Authorization": f"token {server.token}"}


async def fetch(url: str, **kwargs: Any) -> HTTPResponse:
    client = AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(url, raise_error=False, follow_redirects=False, **kwargs)
    finally:
        client.close()


async def ws_open(server: JupyterServer, query: str = "", headers: dict[str, str] | None = None) -> WsClient:
    url = server.url.replace("http://", "ws://") + "api/v1/dashboard/ws" + query
    return WsClient(await websocket_connect(HTTPRequest(url, headers=headers or {})))


async def ws_refused(server: JupyterServer, headers: dict[str, str]) -> int:
    with pytest.raises(HTTPClientError) as refused:
        await ws_open(server, headers=headers)
    return refused.value.code


async def sse_open(server: JupyterServer, query: str = "",
                   headers: dict[str, str] | None = None) -> SseClient:
    stream = await TCPClient().connect("127.0.0.1", server.port)
    path = f"{server.base_url}autopm/api/v1/sse/events{query}"
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Accept: text/event-stream",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    return SseClient(stream)


async def sse_connected(server: JupyterServer, query: str = "", **kwargs: Any) -> SseClient:
    client = await sse_open(server, query, **kwargs)
    assert (await client.receive())["retry"] is not None
    assert (await client.receive())["event"] == "connection_established"
    assert client.status == 200 and client.headers["content-type"].startswith("text/event-stream")
    return client


async def login_cookie(server: JupyterServer) -> str:
    """The login cookie Jupyter sets on a request authenticated with `?token=`."""
    response = await fetch(f"{server.url}?token={server.token}")
    assert response.code == 200
    cookies = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        cookies.load(header)
    [name] = [name for name in cookies if name.startswith("username-")]
    return f"{name}={cookies[name].value}"


async def publish(server: JupyterServer, body: Any, headers: dict[str, str]) -> HTTPResponse:
    return await fetch(server.url + "api/v1/events", method="POST", body=json.dumps(body),
                       headers={"Content-Type": "application/json", **headers})


# --- with a token, everything works --------------------------------------------------------------

async def test_every_endpoint_answers_with_a_token(jupyter):
    auth = token_header(jupyter)
    page_response = await fetch(jupyter.url, headers=auth)
    assert page_response.code == 200
    assert page_response.headers["Content-Type"].startswith("text/html")
    assert b"<!doctype html>" in page_response.body.lower()

    answers = {path: await fetch(jupyter.url + path, headers=auth) for path in ENDPOINTS[1:]}
    assert {path: r.code for path, r in answers.items()} == dict.fromkeys(ENDPOINTS[1:], 200)
    body = {path: json.loads(r.body) for path, r in answers.items()}
    assert {"websocket_connections", "total_connections", "subscription_counts",
            "message_queue_size"} <= body["api/v1/dashboard/ws/stats"].keys()
    assert "sse_connections" in body["api/v1/sse/stats"]
    assert isinstance(body["api/v1/events"]["events"], list) and "recovered" in body["api/v1/events"]
    [project] = body["api/v1/projects"]["projects"]
    assert project["id"] == "project" and project["path"] == str(jupyter.root.resolve())
    assert body["api/v1/health"]["status"] == "ok"
    assert body["api/v1/health"]["broker"]["kind"] == "memory"
    assert answers["api/v1/health"].headers["Cache-Control"] == "no-store"
    metrics = await fetch(jupyter.url + "metrics", headers=auth)
    assert metrics.code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert b'autopm_broker_up{kind="memory"} 1.0' in metrics.body


async def test_a_publish_reaches_both_transports_and_history(jupyter):
    socket = await ws_open(jupyter, headers=token_header(jupyter))
    assert (await socket.receive())["type"] == "connection_established"
    await socket.subscribe(event_types=["risk_alert"], project_id="my-project")
    stream = await sse_connected(jupyter, f"?event_types=risk_alert&token={jupyter.token}")

    event = {"type": "risk_alert", "project_id": "my-project",
             "data": {"severity": "high", "message": "published inside Jupyter"}}
    response = await publish(jupyter, event, token_header(jupyter))
    assert response.code == 202, response.body
    event_id = json.loads(response.body)["id"]

    [over_ws] = await socket.events(1)
    [over_sse] = await stream.events(1)
    assert over_ws["id"] == over_sse["id"] == over_sse["data"]["id"] == event_id
    assert over_ws["data"]["message"] == "published inside Jupyter"
    history = await fetch(jupyter.url + "api/v1/events?event_types=risk_alert",
                          headers=token_header(jupyter))
    assert [e["id"] for e in json.loads(history.body)["events"]] == [event_id]

    invalid = await publish(jupyter, {"type": "risk_alert"}, token_header(jupyter))
    assert invalid.code == 400 and "error" in json.loads(invalid.body)   # the core's JSON errors


async def test_a_file_written_in_the_root_directory_reaches_a_websocket(jupyter):
    socket = await ws_open(jupyter, f"?token={jupyter.token}")
    await socket.receive()
    await socket.subscribe(event_types=["file_change"])
    for attempt in range(5):   # the watcher starts in the background with the server: try again if early
        (jupyter.root / f"notes-{attempt}.md").write_text("written while a dashboard watches\n")
        try:
            [event] = await socket.events(1, timeout=2)
            break
        except TimeoutError:
            continue
    else:
        pytest.fail(f"no file_change: {jupyter.log}")
    assert event["type"] == "file_change" and event["project_id"] == "project"
    assert event["data"]["file_path"].startswith("notes-") and event["data"]["change_type"] == "created"


async def test_the_python_client_resumes_with_a_token_on_both_transports(jupyter):
    auth = token_header(jupyter)
    marker = await publish(jupyter, {"type": "risk_alert", "project_id": "my-project",
                                     "data": {"severity": "low", "message": "before"}}, auth)
    progress = {"type": "progress_update", "project_id": "my-project",
                "data": {"progress_percentage": 50, "completed_tasks": 1, "total_tasks": 2}}
    published = await publish(jupyter, progress, auth)
    for transport in ("websocket", "sse"):
        async with subscribe(jupyter.url, event_types=["progress_update"], transport=transport, headers=auth,
                             last_event_id=json.loads(marker.body)["id"], max_retries=0) as client:
            event = await asyncio.wait_for(anext(client), 5)
        assert event["id"] == json.loads(published.body)["id"], transport


# --- without a token, nothing ---------------------------------------------------------------------

async def test_without_a_token_every_endpoint_is_403_with_no_login_redirect(jupyter):
    for path in (*ENDPOINTS, "api/v1/sse/events", "metrics"):
        response = await fetch(jupyter.url + path)
        assert response.code == 403, (path, response.code, response.headers.get("Location"))
        assert json.loads(response.body)["error"]["status"] == 403
    refused = await publish(jupyter, file_change(), {})
    assert refused.code == 403
    wrong_token = await fetch(jupyter.url + "api/v1/health", headers={"Authorization": "token nope"})
    assert wrong_token.code == 403

    assert await ws_refused(jupyter, {}) == 403
    stats = json.loads((await fetch(jupyter.url + "api/v1/sse/stats", headers=token_header(jupyter))).body)
    assert stats["sse_connections"] == 0


async def test_a_cookie_authenticated_publish_needs_the_xsrf_token(jupyter):
    cookie = await login_cookie(jupyter)
    assert (await fetch(jupyter.url + "api/v1/health", headers={"Cookie": cookie})).code == 200

    without_xsrf = await publish(jupyter, file_change(), {"Cookie": cookie})
    assert without_xsrf.code == 403
    assert json.loads(without_xsrf.body)["error"]["status"] == 403

    xsrf = secrets.token_hex(16)   # tornado's double-submit check: the header must match the cookie
    with_xsrf = await publish(jupyter, file_change(), {"Cookie": f"{cookie}; _xsrf={xsrf}",
                                                       "X-XSRFToken": xsrf})
    assert with_xsrf.code == 202, with_xsrf.body
    with_token = await publish(jupyter, file_change(), token_header(jupyter))
    assert with_token.code == 202


async def test_jupyter_origin_rules_apply(jupyter):
    cookie = await login_cookie(jupyter)
    same_origin = f"http://127.0.0.1:{jupyter.port}"
    assert await ws_refused(jupyter, {"Cookie": cookie, "Origin": FOREIGN_ORIGIN}) == 403
    socket = await ws_open(jupyter, headers={"Cookie": cookie, "Origin": same_origin})
    assert (await socket.receive())["type"] == "connection_established"
    # A script that holds the token is no cross-site page: Jupyter lets token-authenticated requests in.
    socket = await ws_open(jupyter, headers={**token_header(jupyter), "Origin": FOREIGN_ORIGIN})
    assert (await socket.receive())["type"] == "connection_established"

    # Cross-origin HTTP follows Jupyter's APIHandler rules, not the core's --cors-origin.
    foreign = await fetch(jupyter.url + "api/v1/health", headers={"Cookie": cookie, "Origin": FOREIGN_ORIGIN})
    assert foreign.code == 404
    assert "Vary" not in foreign.headers


# --- the whole life of a server --------------------------------------------------------------------

async def stops_cleanly(server: JupyterServer, stop) -> None:
    """With a WebSocket and an SSE stream open, `stop()` the server: both are closed by the hub (1001,
    the end of the stream), the process exits 0 through the extension's stop hook, and its log is clean."""
    socket = await ws_open(server, headers=token_header(server))
    assert (await socket.receive())["type"] == "connection_established"
    stream = await sse_connected(server, headers=token_header(server))
    await stop()
    assert await socket.closed() == (1001, "server shutting down")
    await stream.end_of_stream()
    assert server.exit_code() == 0
    assert "autopm-realtime stopped" in server.log
    server.assert_clean_log()


async def test_shutdown_through_the_api_is_clean(jupyter):
    async def shutdown() -> None:
        response = await fetch(f"http://127.0.0.1:{jupyter.port}/jh/api/shutdown", method="POST", body=b"",
                               headers=token_header(jupyter))
        assert response.code == 200

    await stops_cleanly(jupyter, shutdown)


async def test_default_base_url_and_sigterm(servers):
    server = servers["sigterm"]
    assert server.url.endswith(f":{server.port}/autopm/")
    assert (await fetch(server.url + "api/v1/health", headers=token_header(server))).code == 200
    assert (await fetch(server.url + "api/v1/health")).code == 403

    async def sigterm() -> None:
        server.popen.send_signal(signal.SIGTERM)

    await stops_cleanly(server, sigterm)


async def test_ctrl_c_twice_on_a_terminal_stops_cleanly(servers):
    server = servers["ctrl_c"]

    async def ctrl_c_twice() -> None:
        server.popen.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)   # Jupyter swaps in its "stop now" handler for the second Ctrl-C
        server.popen.send_signal(signal.SIGINT)

    await stops_cleanly(server, ctrl_c_twice)


def test_an_invalid_setting_is_a_clear_startup_error(tmp_path):
    server = JupyterServer(tmp_path / "bad", "--AutoPMRealtime.broker_url=kafka://localhost:9092",
                           "--ServerApp.reraise_server_extension_failures=True")
    try:
        assert server.exit_code() != 0
        assert "AutoPMRealtime.broker_url 'kafka://localhost:9092' is not supported" in server.log
    finally:
        server.kill()


# --- installing enables the extension --------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def throwaway_venv(path: Path) -> str:
    """A virtual environment whose own site-packages come first and this interpreter's after them.

    Not `--system-site-packages`: inside a virtual environment "system" is the base interpreter, which has
    none of the packages the tests run with (no tornado). A `.pth` file names this interpreter's
    site-packages, virtual or not, so the throwaway one imports the runtime dependencies from there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    [own] = (path / "lib").glob("python3*/site-packages")
    inherited = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (own / "inherited-site-packages.pth").write_text("".join(f"{entry}\n" for entry in inherited))
    return str(path / "bin" / "python")


def extension_list(python: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run([python, "-m", "jupyter_server", "extension", "list"], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return ANSI.sub("", result.stdout + result.stderr)


def assert_enabled_and_ok(listing: str, config_dir: Path) -> None:
    section = listing[listing.index(f"Config dir: {config_dir}"):]
    section = section[:section.find("Config dir:", 1) if "Config dir:" in section[1:] else None]
    assert re.search(r"^\s+jupyter_ext enabled$", section, re.MULTILINE), listing
    assert re.search(r"^\s+jupyter_ext \S+ OK$", section, re.MULTILINE), listing


def test_the_enable_command_for_editable_installs(tmp_path):
    """`python -m jupyter_ext enable` writes the file a wheel installs (here into JUPYTER_CONFIG_DIR)."""
    env = environment(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
                      JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    enable = subprocess.run([sys.executable, "-m", "jupyter_ext", "enable", "--user"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert enable.returncode == 0, enable.stderr
    written = json.loads((tmp_path / "config" / "jupyter_server_config.d" / "jupyter_ext.json").read_text())
    assert written == json.loads(SHIPPED_CONFIG.read_text())
    assert_enabled_and_ok(extension_list(sys.executable, env, tmp_path), tmp_path / "config")


@pytest.mark.slow
def test_a_wheel_install_enables_the_extension(tmp_path):
    """Build the wheel from a copy of the sources, install it in a throwaway virtual environment that also
    sees the packages of the one running the tests (for Jupyter), and ask that environment's Jupyter, with
    an empty user config."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "README.md", "LICENSE", "autopm_realtime", "jupyter_ext", "jupyter-config"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    env = {key: value for key, value in environment().items() if key != "PYTHONPATH"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, env=env,
                           timeout=300)
    require(built.returncode == 0, "could not build the wheel (pip fetches setuptools for an isolated "
                                   f"build): {built.stderr[-500:]}")
    [wheel] = (tmp_path / "dist").glob("autopm_realtime-*.whl")

    python = throwaway_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
                    str(wheel)], check=True, env=env, capture_output=True, timeout=300)
    installed = tmp_path / "venv" / "etc" / "jupyter" / "jupyter_server_config.d" / "jupyter_ext.json"
    assert json.loads(installed.read_text()) == json.loads(SHIPPED_CONFIG.read_text())

    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "empty"), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    where = subprocess.run([python, "-c", "import jupyter_ext; print(jupyter_ext.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where   # the wheel's copy, not this checkout
    assert_enabled_and_ok(extension_list(python, env, tmp_path), tmp_path / "venv" / "etc" / "jupyter")


# --- in process: the handlers and the settings -------------------------------------------------------

def test_every_route_is_the_core_handler_with_every_method_authenticated(tmp_path):
    service = RealtimeService(Settings(projects=(ProjectSpec(tmp_path, "p"),)), run_sources=False)
    core = routes(service, "/autopm/")
    mounted = jupyter_routes(service, "/autopm/")
    assert [path for path, *_ in mounted] == [path for path, *_ in core]
    for (path, handler, kwargs), (_, core_handler, core_kwargs) in zip(mounted, core):
        assert issubclass(handler, core_handler) and kwargs == core_kwargs
        assert handler.auth_resource == "autopm"
        assert ServerWebApplication._check_handler_auth(None, path, handler) == [], handler


def test_settings_from_the_traits(tmp_path):
    root = tmp_path / "My Notebooks"
    (root / "sub").mkdir(parents=True)
    settings = build_settings(root_dir=root)
    assert settings.projects == (ProjectSpec(root.resolve(), "My-Notebooks"),)   # a valid id from the name
    assert (settings.heartbeat, settings.history, settings.auto_commit, settings.cors_origins) == \
        (30.0, 10_000, "off", ())
    assert settings.broker == "memory"
    shared = build_settings(root_dir=root, broker_url="redis://127.0.0.1:6379/2",
                            core_settings={"redis_prefix": "team"})
    assert (shared.broker, shared.redis_prefix) == ("redis://127.0.0.1:6379/2", "team")

    settings = build_settings(root_dir=root, projects=["sub=docs", str(tmp_path)], heartbeat=5, history=50,
                              auto_commit="Shadow", tasks=["plan/*.md"], no_watch=True,
                              core_settings={"commit_quiet": 1, "ignore": ["*.log"]})
    assert settings.projects == (ProjectSpec((root / "sub").resolve(), "docs"),   # relative to the root
                                 ProjectSpec(tmp_path.resolve(), tmp_path.name))
    assert (settings.heartbeat, settings.history, settings.auto_commit) == (5.0, 50, "shadow")
    assert (settings.tasks, settings.no_watch) == (("plan/*.md",), True)
    assert (settings.commit_quiet, settings.ignore) == (1.0, ("*.log",))


@pytest.mark.parametrize("traits, message", [
    ({"heartbeat": 0}, "AutoPMRealtime.heartbeat must be positive"),
    ({"history": -1}, "AutoPMRealtime.history must be positive"),
    ({"broker_url": "kafka://localhost"}, "AutoPMRealtime.broker_url 'kafka://localhost' is not supported"),
    ({"core_settings": {"jwt_secret": "x" * 40}}, "AutoPMRealtime.core_settings['jwt_secret']: Jupyter Server decides"),
    ({"core_settings": {"broker": "redis://x"}}, "set AutoPMRealtime.broker_url instead"),
    ({"auto_commit": "sometimes"}, "auto-commit mode 'sometimes'"),
    ({"projects": ["missing"]}, "AutoPMRealtime.projects"),
    ({"core_settings": {"port": 1}}, "AutoPMRealtime.core_settings['port']: Jupyter Server decides"),
    ({"core_settings": {"heartbeat": 1}}, "set AutoPMRealtime.heartbeat instead"),
    ({"core_settings": {"no_such": 1}}, "AutoPMRealtime.core_settings['no_such']: no such setting"),
    ({"core_settings": {"commit_quiet": "soon"}}, "AutoPMRealtime.core_settings['commit_quiet'] = 'soon'"),
    ({"core_settings": {"coalesce_ms": 0}}, "AutoPMRealtime.core_settings['coalesce_ms'] must be positive"),
])
def test_an_invalid_trait_is_named_in_the_error(tmp_path, traits, message):
    with pytest.raises(ConfigError) as error:
        build_settings(root_dir=tmp_path, **traits)
    assert message in str(error.value)
    assert str(error.value).startswith("AutoPMRealtime")


def test_the_docs_list_every_setting_with_its_default():
    docs = (ROOT / "docs" / "jupyter.md").read_text()
    rows = dict(re.findall(r"^\| `c\.AutoPMRealtime\.(\w+)` \| `([^`]+)`", docs, re.MULTILINE))
    traits = {name: trait for name, trait in AutoPMRealtime.class_own_traits(config=True).items()}
    assert rows.keys() == traits.keys()
    for name, trait in traits.items():
        assert ast.literal_eval(rows[name]) == trait.default(), name
