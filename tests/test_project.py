"""A served project end to end: the server as a subprocess on a real git repository, a user editing it,
and the four event types arriving over a real WebSocket. Git is checked with the git CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from support import Process, WsClient, publish, risk

pytestmark = pytest.mark.timeout(60)

GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.com", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=GIT_ENV).stdout.rstrip()


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "demo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# demo\n")
    (repo / "TODO.md").write_text("- [x] write the README\n- [ ] ship it\n")
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    return repo


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


async def collect(ws: WsClient, done, timeout: float = 20.0) -> list[dict]:
    """Events until `done(events)` holds; fails with what arrived if it does not within `timeout`."""
    events: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(events):
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            events.extend(await ws.events(1, timeout=max(remaining, 0.001)))
        except asyncio.TimeoutError:
            raise AssertionError(f"not all expected events arrived within {timeout} s; got "
                                 f"{[(e['type'], e['data']) for e in events]}") from None
    return events


async def test_a_user_session_streams_all_four_event_types(io_loop, repo):
    head = git(repo, "rev-parse", "HEAD")
    index_before = (repo / ".git" / "index").read_bytes()
    process, url = Process.serve("--project", f"{repo}=demo", "--commit-quiet", "0.3",
                                 "--commit-max-wait", "2", "--risk-interval", "0.1")
    try:
        ws, _ = await WsClient.connected(port_of(url))
        await ws.subscribe(project_id="demo")

        (repo / "src").mkdir()
        (repo / "src" / "app.py").write_text("print('hello')\n")      # a new file
        (repo / "build").mkdir()
        (repo / "build" / "out.bin").write_bytes(b"\0")                 # ignored by .gitignore
        (repo / "TODO.md").write_text("- [x] write the README\n- [x] ship it\n")   # a box checked
        overdue = (datetime.now(timezone.utc) - timedelta(days=2)).date().isoformat()
        (repo / ".autopm").mkdir()
        (repo / ".autopm" / "tasks.json").write_text(json.dumps(
            [{"id": "docs", "title": "Write the docs", "status": "todo", "due": overdue}]))

        def seen(events, kind, **fields):
            return [e for e in events if e["type"] == kind
                    and all(e["data"].get(k) == v for k, v in fields.items())]

        def everything_arrived(events):
            return (seen(events, "file_change", file_path="src/app.py")
                    and seen(events, "auto_commit", event="result", success=True)
                    and seen(events, "progress_update", completed_tasks=2, total_tasks=3)
                    and seen(events, "risk_alert", rule="overdue", state="raised"))

        events = await collect(ws, everything_arrived)
        assert not [e for e in events if e["data"].get("file_path", "").startswith("build/")]
        [progress] = seen(events, "progress_update", completed_tasks=2, total_tasks=3)
        assert progress["data"]["progress_percentage"] == 66.7
        [risk_raised] = seen(events, "risk_alert", rule="overdue", state="raised")
        assert risk_raised["data"]["severity"] == "high"

        # The snapshot is a real commit on the autosave ref, with the work in it ...
        result = seen(events, "auto_commit", event="result", success=True)[-1]["data"]
        assert result["ref"] == "refs/autopm/autosave/main"
        snapshot = git(repo, "rev-parse", result["ref"])
        assert git(repo, "cat-file", "-t", result["sha"]) == "commit"
        assert result["sha"] in git(repo, "rev-list", snapshot)
        assert "src/app.py" in git(repo, "ls-tree", "-r", "--name-only", result["sha"]).split()
        assert "build/out.bin" not in git(repo, "ls-tree", "-r", "--name-only", snapshot).split()
        assert f"Autopm-Base: {head}" in git(repo, "log", "-1", "--format=%B", result["sha"])
        # ... and the user's branch, HEAD, index and status are as they were.
        assert git(repo, "rev-parse", "HEAD") == head == git(repo, "rev-parse", "main")
        assert (repo / ".git" / "index").read_bytes() == index_before
        assert set(git(repo, "status", "--porcelain").splitlines()) == {
            " M TODO.md", "?? .autopm/", "?? src/"}
        git(repo, "fsck", "--strict")
    finally:
        process.stop()


async def test_no_watch_publishes_no_file_changes(io_loop, repo, http):
    process, url = Process.serve("--project", f"{repo}=demo", "--no-watch", "--auto-commit", "off")
    try:
        ws, _ = await WsClient.connected(port_of(url))
        await ws.subscribe(project_id="demo", event_types=["file_change", "risk_alert"])
        (repo / "new.py").write_text("x = 1\n")
        await publish(http, port_of(url), risk("sentinel", project="demo"))
        [first] = await ws.events(1)
        assert first["type"] == "risk_alert" and first["data"]["message"] == "sentinel"
        assert "refs/autopm" not in git(repo, "for-each-ref")
    finally:
        process.stop()


WIDE_TREE_DIRECTORIES = 3000   # enough for the watcher to take a while to start, on this machine ~0.3 s


def make_wide_tree(repo: Path) -> Path:
    """Directories under `repo/tree`; returns the last one."""
    for index in range(WIDE_TREE_DIRECTORIES):
        (repo / "tree" / f"d{index:05}").mkdir(parents=True)
    return repo / "tree" / f"d{WIDE_TREE_DIRECTORIES - 1:05}"


async def test_a_change_made_as_soon_as_the_server_answers_is_reported(io_loop, repo):
    """`serve` listens only once its watcher watches the tree. A tree of a few thousand directories takes
    the watcher a while to watch (a watch per directory, then the scan); a file written in the last of
    them as soon as a client has subscribed must still be reported."""
    last = make_wide_tree(repo)
    process, url = Process.serve("--project", f"{repo}=demo", "--auto-commit", "off", "--coalesce-ms", "20")
    try:
        ws, _ = await WsClient.connected(port_of(url))
        await ws.subscribe(project_id="demo", event_types=["file_change"])
        (last / "early.py").write_text("x = 1\n")
        events = await collect(ws, lambda events: any(e["data"]["file_path"].endswith("early.py")
                                                      for e in events), timeout=10)
        assert events[-1]["data"]["change_type"] == "created", events
    finally:
        process.stop()


def test_a_watcher_slower_than_the_start_timeout_is_named_and_the_server_listens_anyway(repo):
    make_wide_tree(repo)
    process, url = Process.serve("--project", f"{repo}=demo", "--auto-commit", "off",
                                 "--watch-start-timeout", "0.001")
    try:
        warnings = [line for line in process.seen if "--watch-start-timeout" in line]
        assert warnings and "demo (still starting)" in warnings[0] and "WARNING" in warnings[0], process.seen
    finally:
        process.stop()


def test_sigterm_while_the_watchers_start_stops_the_server_cleanly(repo):
    """`serve` handles SIGTERM from the moment it starts, the wait for the watchers included: it stops
    without serving, without a traceback, with exit status 0."""
    make_wide_tree(repo)
    process = Process("serve", "--port", "0", "--project", f"{repo}=demo", "--auto-commit", "off")
    try:
        process.stderr_match(re.compile(r"waiting up to .* for the file watchers of demo"))
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=10) == 0
        rest = process.remaining_stderr()
        assert "serving" not in " ".join(process.seen + rest), process.seen + rest
        assert not [line for line in rest if "Traceback" in line], rest
    finally:
        process.stop()
