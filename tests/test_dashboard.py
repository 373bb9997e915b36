"""The dashboard page at `/`, driven in a real headless Chromium (Debian's `chromium`) with Playwright.

Each test gets its own server subprocess (`serve --project TMP=demo --no-watch --auto-commit off`) and a fresh
browser context; the browser itself is started once per module. Events are published with plain HTTP
(`POST /api/v1/events`) and the page is checked through the `data-testid` hooks of its contract. Playwright's
`expect(...)` does the waiting: there are no sleeps.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.request
from pathlib import Path

import pytest

from autopm_realtime.tokens import mint_token
from support import ROOT, Process, file_change, free_port, progress, redis_answers, require, risk

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROJECT = "demo"
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 10_000   # for every expectation; the page normally gets there in milliseconds
SCREENSHOT = ROOT / "docs" / "dashboard.png"
HOSTILE = "<img src=x onerror=alert(1)>.py"
SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"

pytestmark = pytest.mark.slow   # a headless Chromium per test

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:   # the [test] extra brings playwright; require() below turns this into a skip/failure
    sync_playwright = None


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    require(os.path.exists(CHROMIUM) and sync_playwright is not None,
            f"the dashboard tests need Debian's chromium at {CHROMIUM} and the playwright package")
    expect.set_options(timeout=TIMEOUT_MS)
    playwright = sync_playwright().start()
    try:
        # executable_path: Playwright never downloads or looks for its own browser builds.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


class Server:
    """One `serve` subprocess; `restart()` brings it back on the same port (with the memory broker, a new
    and empty one; with `--broker redis://...`, the same history)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.args = ("--project", f"{directory}={PROJECT}", "--no-watch", "--auto-commit", "off", *extra)
        self.process, self.url = Process.serve(*self.args)
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        # argparse keeps the last --port, so this overrides serve()'s "--port 0".
        self.process, url = Process.serve("--port", str(self.port), *self.args)
        assert url == self.url, (url, self.url)

    def publish(self, *events: dict) -> list[str]:
        """POST the events one by one; returns their ids."""
        ids = []
        for event in events:
            request = urllib.request.Request(f"{self.url}api/v1/events", data=json.dumps(event).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 202, response.status
                ids.append(json.loads(response.read())["id"])
        return ids

    def dashboard(self) -> str:
        return f"{self.url}?project={PROJECT}"


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


class Watched:
    """A page plus everything it reported that a test may want to hold against it."""

    def __init__(self, page) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def testid(self, name: str):
        return self.page.get_by_test_id(name)

    def connected(self, server: Server, state: str = "websocket") -> None:
        self.page.goto(server.dashboard())
        expect(self.testid("connection-state")).to_have_text(state)

    def assert_clean(self) -> None:
        assert self.page_errors == [], self.page_errors
        assert self.console_errors == [], self.console_errors
        assert self.dialogs == [], self.dialogs


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def watched(context):
    return Watched(context.new_page())


def commit(sha: str = SHA, changes: int = 3, project: str = PROJECT) -> dict:
    return {"type": "auto_commit", "project_id": project,
            "data": {"event": "result", "success": True, "changes_count": changes, "sha": sha,
                     "ref": "refs/autopm/autosave/main", "trigger": "quiet_period", "duration_ms": 41.7}}


# --- tests ------------------------------------------------------------------------------------

def test_page_loads_connects_over_websocket_without_errors(server, watched):
    watched.connected(server)
    for hook in ("progress-percentage", "progress-counts", "file-change-count", "file-change-list",
                 "commit-list", "risk-list", "connection-state", "project-picker"):
        expect(watched.testid(hook)).to_have_count(1)
    expect(watched.testid("file-change-count")).to_have_text(re.compile(r"^\s*0\s*$"))
    watched.assert_clean()


def test_progress_update_moves_the_bar_and_the_text(server, watched):
    watched.connected(server)
    server.publish(progress(75.5, 15, 20, project=PROJECT))
    expect(watched.testid("progress-percentage")).to_have_text("75.5%")
    expect(watched.testid("progress-counts")).to_have_text("15 / 20")
    # The bar: the page's one progressbar, by its accessible role.
    expect(watched.page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "75.5")
    watched.assert_clean()


def test_file_changes_count_up_and_are_listed(server, watched):
    watched.connected(server)
    paths = ["src/app.py", "src/models/user.py", "README.md"]
    for n, path in enumerate(paths, 1):
        server.publish(file_change(path, project=PROJECT))
        expect(watched.testid("file-change-count")).to_have_text(str(n))
    listing = watched.testid("file-change-list")
    for path in paths:
        expect(listing).to_contain_text(path)
    watched.assert_clean()


def test_events_of_another_project_do_not_show(server, watched):
    watched.connected(server)
    server.publish(file_change("elsewhere.py", project="other"), file_change("here.py", project=PROJECT))
    expect(watched.testid("file-change-list")).to_contain_text("here.py")
    expect(watched.testid("file-change-count")).to_have_text("1")
    expect(watched.testid("file-change-list")).not_to_contain_text("elsewhere.py")


def test_commit_result_appears_in_the_commit_list(server, watched):
    watched.connected(server)
    server.publish(commit())
    # The sha, or at least its usual 7-character abbreviation.
    expect(watched.testid("commit-list")).to_contain_text(SHA[:7])
    watched.assert_clean()


def test_risk_alert_appears_in_the_risk_list(server, watched):
    watched.connected(server)
    server.publish(risk("Progress slowing down", "high", project=PROJECT))
    risks = watched.testid("risk-list")
    expect(risks).to_contain_text("Progress slowing down")
    expect(risks).to_contain_text(re.compile("high", re.IGNORECASE))
    watched.assert_clean()


def test_hostile_file_name_renders_as_text(server, watched):
    watched.connected(server)
    server.publish(file_change(HOSTILE, project=PROJECT), risk(f"touched {HOSTILE}", project=PROJECT))
    listing = watched.testid("file-change-list")
    expect(listing).to_contain_text(HOSTILE)
    expect(watched.testid("risk-list")).to_contain_text(f"touched {HOSTILE}")
    expect(watched.page.locator("img")).to_have_count(0)
    assert watched.dialogs == []
    watched.assert_clean()


def test_reconnects_after_a_server_restart_on_the_same_port(server, watched):
    watched.connected(server)
    server.publish(file_change("before.py", project=PROJECT))
    expect(watched.testid("file-change-list")).to_contain_text("before.py")

    server.stop()
    expect(watched.testid("connection-state")).to_have_text("reconnecting")
    server.restart()
    expect(watched.testid("connection-state")).to_have_text("websocket", timeout=20_000)

    # Events published after the restart arrive, each exactly once. (The restarted memory broker does not
    # know the page's last id, so whether the page keeps or clears what it showed before is its choice;
    # it must not show anything twice.)
    server.publish(file_change("after-1.py", project=PROJECT), file_change("after-2.py", project=PROJECT))
    listing = watched.testid("file-change-list")
    expect(listing).to_contain_text("after-2.py")
    for name in ("after-1.py", "after-2.py"):
        expect(listing.get_by_text(name, exact=False)).to_have_count(1)
    assert listing.get_by_text("before.py", exact=False).count() <= 1
    assert watched.page_errors == [], watched.page_errors
    assert watched.dialogs == [], watched.dialogs
    # (Console errors are expected here: Chromium logs the refused connections while the server is down.)


@pytest.fixture
def redis_servers(tmp_path):
    """`redis_servers()`: a server on the Redis broker, all on one key prefix of this test alone; the
    prefix's keys are deleted afterwards (never a FLUSHDB)."""
    url = os.environ.get("AUTOPM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    require(redis_answers(url), f"no Redis answers at {url} (set AUTOPM_TEST_REDIS_URL)")
    prefix = f"autopm-dashboard-{os.getpid()}-{secrets.token_hex(4)}"
    started: list[Server] = []

    def start() -> Server:
        started.append(Server(tmp_path, "--broker", url, "--redis-prefix", prefix))
        return started[-1]

    yield start
    for server in started:
        server.stop()
    import redis

    client = redis.Redis.from_url(url)
    client.delete(*client.keys(f"{prefix}:*") or [f"{prefix}:events"])
    client.close()


def test_events_published_while_its_server_was_down_appear_once_after_the_restart(redis_servers, watched):
    """On a broker that keeps events (Redis), a restarted server serves the page's resume: what another
    server published meanwhile shows up, once, and so does nothing already shown."""
    server, other = redis_servers(), redis_servers()
    watched.connected(server)
    server.publish(file_change("before.py", project=PROJECT))
    expect(watched.testid("file-change-list")).to_contain_text("before.py")

    server.stop()
    expect(watched.testid("connection-state")).to_have_text("reconnecting")
    other.publish(file_change("while-down-1.py", project=PROJECT), file_change("while-down-2.py", project=PROJECT),
                  progress(42.5, 4, 10, project=PROJECT))
    server.restart()
    expect(watched.testid("connection-state")).to_have_text("websocket", timeout=20_000)

    listing = watched.testid("file-change-list")
    expect(listing).to_contain_text("while-down-2.py")
    expect(watched.testid("progress-percentage")).to_have_text("42.5%")
    server.publish(file_change("after.py", project=PROJECT))
    expect(listing).to_contain_text("after.py")
    for name in ("before.py", "while-down-1.py", "while-down-2.py", "after.py"):
        expect(listing.get_by_text(name, exact=False)).to_have_count(1)
    expect(watched.testid("file-change-count")).to_have_text("4")
    assert watched.page_errors == [], watched.page_errors
    assert watched.dialogs == [], watched.dialogs


def block_websocket(context) -> None:
    """Make the page's WebSocket to the dashboard endpoint fail until the page sets
    `window.autopmBlockWebSocket = false`.

    Playwright's page.route does not see WebSocket handshakes, and route_web_socket only mocks an *open*
    socket. So the WebSocket is pointed at a port nobody listens on: the browser then fails it exactly as
    it fails a socket a proxy or firewall refuses (error, close 1006, never open), while every other
    request, the SSE stream included, goes to the real server."""
    dead = f"ws://127.0.0.1:{free_port()}/api/v1/dashboard/ws"
    context.add_init_script(f"""(() => {{
        const Real = window.WebSocket;
        window.autopmBlockWebSocket = true;
        function Blocked(url, protocols) {{
            const blocked = window.autopmBlockWebSocket && String(url).includes('/api/v1/dashboard/ws');
            const target = blocked ? {json.dumps(dead)} : url;
            return protocols === undefined ? new Real(target) : new Real(target, protocols);
        }}
        Blocked.prototype = Real.prototype;
        for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Blocked[k] = Real[k];
        window.WebSocket = Blocked;
    }})();""")


def test_falls_back_to_sse_when_the_websocket_is_blocked(server, context):
    block_websocket(context)
    watched = Watched(context.new_page())
    watched.page.goto(server.dashboard())
    expect(watched.testid("connection-state")).to_have_text("sse", timeout=20_000)

    server.publish(file_change("over-sse.py", project=PROJECT), progress(40, 2, 5, project=PROJECT))
    expect(watched.testid("file-change-list")).to_contain_text("over-sse.py")
    expect(watched.testid("file-change-count")).to_have_text("1")
    expect(watched.testid("progress-percentage")).to_have_text(re.compile(r"^\s*40(\.0)?%\s*$"))
    assert watched.page_errors == [], watched.page_errors


def test_returns_to_websocket_once_it_gets_through_again(server, context):
    """On SSE because the WebSocket was blocked, the page tries a WebSocket on the side now and then
    (every `wsProbeMs`, 60 s by default, 0.3 s here) and switches back once one is greeted, resuming from
    its last event: what arrived over either transport shows once."""
    block_websocket(context)
    context.add_init_script("window.AUTOPM_DASHBOARD = { wsProbeMs: 300 };")
    watched = Watched(context.new_page())
    watched.page.goto(server.dashboard())
    expect(watched.testid("connection-state")).to_have_text("sse", timeout=20_000)
    server.publish(file_change("over-sse.py", project=PROJECT))
    expect(watched.testid("file-change-list")).to_contain_text("over-sse.py")

    watched.page.evaluate("window.autopmBlockWebSocket = false")
    expect(watched.testid("connection-state")).to_have_text("websocket")
    server.publish(file_change("over-websocket.py", project=PROJECT))
    expect(watched.testid("file-change-list")).to_contain_text("over-websocket.py")
    expect(watched.testid("file-change-count")).to_have_text("2")
    assert watched.testid("file-change-list").get_by_text("over-sse.py").count() == 1
    assert watched.page_errors == [], watched.page_errors


@pytest.mark.parametrize("websocket, in_cookie", [(True, False), (False, False), (False, True)],
                         ids=["websocket-query", "sse-query", "sse-cookie"])
def test_an_expired_token_is_shown_and_not_retried(tmp_path, context, websocket, in_cookie):
    """With JWT auth on, a page with a short-lived token (`?token=`, or the `autopm_token` cookie): at
    expiry the server ends the connection (WebSocket close 4001; SSE: the stream ends and the next request
    gets 401). The page says the token expired and stays offline instead of reconnecting with it over
    and over."""
    secret = secrets.token_hex(32)
    server = Server(tmp_path, "--jwt-secret", secret)
    try:
        if not websocket:
            block_websocket(context)
        token = mint_token(secret=secret, projects=[PROJECT], ttl_seconds=8)
        watched = Watched(context.new_page())
        if in_cookie:
            context.add_cookies([{"name": "autopm_token", "value": token, "url": server.url}])
            watched.page.goto(server.dashboard())
        else:
            watched.page.goto(f"{server.dashboard()}&token={token}")
        expect(watched.testid("connection-state")).to_have_text("websocket" if websocket else "sse",
                                                                timeout=20_000)
        expect(watched.testid("connection-state")).to_have_text("offline", timeout=20_000)
        expect(watched.testid("connection-detail")).to_contain_text("token expired")
        watched.page.wait_for_timeout(1500)   # an absence cannot be awaited: three backoff steps' worth
        expect(watched.testid("connection-state")).to_have_text("offline")
        assert watched.page_errors == [], watched.page_errors
    finally:
        server.stop()


def test_screenshot_with_realistic_data(server, watched):
    """Saves docs/dashboard.png (1280×900) with a realistic session's worth of events."""
    watched.connected(server)
    changes = [("src/app.py", "modified"), ("src/models/user.py", "created"), ("tests/test_user.py", "created"),
               ("docs/api.md", "modified"), ("src/legacy/auth.py", "deleted"), ("pyproject.toml", "modified")]
    server.publish(*(progress(pct, done, 20, project=PROJECT)
                     for pct, done in ((25.0, 5), (35.0, 7), (42.5, 8), (50.0, 10), (60.0, 12))))
    server.publish(*(file_change(path, project=PROJECT, change=kind) for path, kind in changes[:3]))
    server.publish(commit("3b18e512dba79e4c8300dd08aeb37f8e728b8dad", changes=3))
    server.publish(*(file_change(path, project=PROJECT, change=kind) for path, kind in changes[3:]))
    server.publish(commit(SHA, changes=3))
    server.publish(risk("Velocity dropped 40% over the last 7 days", "high", project=PROJECT),
                   risk("3 tasks have had no activity for 5 days", "medium", project=PROJECT),
                   progress(75.5, 15, 20, project=PROJECT))

    expect(watched.testid("progress-percentage")).to_have_text("75.5%")
    expect(watched.testid("progress-counts")).to_have_text("15 / 20")
    expect(watched.testid("file-change-count")).to_have_text(str(len(changes)))
    expect(watched.testid("commit-list")).to_contain_text(SHA[:7])
    expect(watched.testid("commit-list")).to_contain_text("3b18e51")
    expect(watched.testid("risk-list")).to_contain_text("no activity for 5 days")
    watched.assert_clean()

    SCREENSHOT.parent.mkdir(exist_ok=True)
    watched.page.screenshot(path=str(SCREENSHOT), animations="disabled")
    assert SCREENSHOT.stat().st_size > 10_000
