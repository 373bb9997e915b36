"""The user guide's JavaScript client examples, run unchanged under Node.js against a live server.

`tests/js/guide/*.js` are verbatim copies of the guide's three code blocks (checked below);
`tests/js/run-guide-example.js` runs one of them with the browser globals it needs and prints one JSON
line per message received and per handler call. Each test publishes events that the example's filter
excludes, then the guide's own `file_change`, and checks that exactly what the filter admits reached the
guide's `onmessage` and its handler, in order. Needs `npm ci --prefix tests/js` (CI runs it).
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import pytest

from support import file_change, progress, require

JS_DIR = Path(__file__).parent / "js"
HARNESS = JS_DIR / "run-guide-example.js"
REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO.parent / "shared" / "seed" / "realtime-implementation-guide.md"   # shared/ is beside the repo
GUIDE_FILES = ("subscription-example.js", "sse-usage-example.js", "realtime-dashboard.js")

TIMEOUT = 15.0   # seconds for any one thing to happen: server start, node connecting, an event arriving
SERVING = re.compile(r"serving http://(127\.0\.0\.1:\d+)/")

# The guide's file_change (its "Available Event Types") and events that some examples filter out.
MATCHING = file_change()
OTHER_PROJECT = file_change("docs/notes.md", project="other-project", change="created")
RISK = {"type": "risk_alert", "project_id": "my-project",
        "data": {"severity": "high", "message": "Progress slowing down"}}
PROGRESS = progress(75.5, 15, 20)

# The handler each example's `switch (data.type)` hands an event's data to.
GUIDE_FUNCTIONS = {"file_change": "handleFileChange", "auto_commit": "handleAutoCommit",
                   "progress_update": "updateProgress"}
DASHBOARD_METHODS = {"file_change": "updateFileChangeCounter", "auto_commit": "showCommitNotification",
                     "progress_update": "updateProgressBar", "risk_alert": "showRiskAlert"}


class Lines:
    """The lines of a subprocess pipe, read on a thread so that waiting for one can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._stream = stream
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, found: Callable[[str], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """The first truthy `found(line)` over the lines seen so far and those still to come."""
        for line in self.seen:
            if result := found(line):
                return result
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended before {what}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if result := found(line):
                return result
        raise AssertionError(f"no {what} within {timeout}s:\n" + "\n".join(self.seen))


    def close(self) -> None:
        """After the writer has ended: the reader has seen the end of the stream."""
        self._reader.join(TIMEOUT)
        self._stream.close()


@contextmanager
def running(args: list[str], **streams: Any) -> Iterator[Lines]:
    """Run `args` until the block ends, reading the lines of the one stream given as a PIPE."""
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, text=True, **streams)
    lines = Lines(process.stdout or process.stderr)
    try:
        yield lines
    finally:
        process.terminate()
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        lines.close()


@pytest.fixture(scope="module")
def node_packages() -> None:
    require(shutil.which("node") is not None and (JS_DIR / "node_modules").is_dir(),
            "Node.js and the npm packages of tests/js are needed: run `npm ci --prefix tests/js`")


@pytest.fixture(scope="module")
def server(node_packages, tmp_path_factory) -> str:
    """A real `python -m autopm_realtime` serving an empty directory as my-project; its host:port."""
    project = tmp_path_factory.mktemp("my-project")
    command = [sys.executable, "-m", "autopm_realtime", "--port", "0", "--project", f"{project}=my-project"]
    with running(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as log:
        yield log.wait_for(lambda line: (m := SERVING.search(line)) and m.group(1), "serving line")


def publish(address: str, event: dict[str, Any]) -> str:
    request = urllib.request.Request(f"http://{address}/api/v1/events", data=json.dumps(event).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        assert response.status == 202
        return json.load(response)["id"]


@dataclass(frozen=True)
class Scenario:
    example: str                      # a key of EXAMPLES in run-guide-example.js
    handlers: dict[str, str]          # event type -> the guide's handler for it
    excluded: tuple[dict, ...]        # published first; the example's filter must drop them
    admitted: tuple[dict, ...] = ()   # published next; delivered, before MATCHING
    subscribe: str = ""               # dashboard-sse: types subscribed to before connectSSE()


SCENARIOS = {
    # project_id 'my-project' and three types: another project's file_change and a risk_alert are dropped.
    "subscription-example": Scenario("subscription-example", GUIDE_FUNCTIONS, (OTHER_PROJECT, RISK)),
    # event_types=file_change,auto_commit&project_id=my-project: progress_update is dropped too.
    "sse-usage-example": Scenario("sse-usage-example", GUIDE_FUNCTIONS, (OTHER_PROJECT, PROGRESS)),
    # Subscribes to three types with `project_id: this.projectId` undefined, so every project.
    "dashboard-websocket": Scenario("dashboard-websocket", DASHBOARD_METHODS, (RISK,), (OTHER_PROJECT,)),
    # connectSSE() with no subscriptions yet asks for `event_types=` (empty): every type, every project.
    "dashboard-sse": Scenario("dashboard-sse", DASHBOARD_METHODS, (), (RISK, OTHER_PROJECT)),
    # The SSE fallback after subscribeToEvents(['file_change']): only file_change, of every project.
    "dashboard-sse-subscribed": Scenario("dashboard-sse", DASHBOARD_METHODS, (RISK, PROGRESS),
                                         (OTHER_PROJECT,), subscribe="file_change"),
}


def test_examples_are_the_guides_code_verbatim():
    require(GUIDE.is_file(), f"the user's guide is not at {GUIDE} (shared/ beside the checkout)")
    blocks = re.findall(r"```javascript\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    copies = [(JS_DIR / "guide" / name).read_text(encoding="utf-8") for name in GUIDE_FILES]
    assert copies == blocks


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_guide_example_receives_published_file_change(server, scenario):
    # The guide's console output goes to our stderr, which pytest shows when the test fails.
    with running(["node", str(HARNESS), scenario.example, server, scenario.subscribe],
                 stdout=subprocess.PIPE) as output:
        output.wait_for(lambda line: json.loads(line)["kind"] == "ready", "subscription")
        ids = [publish(server, event) for event in (*scenario.excluded, *scenario.admitted, MATCHING)]
        # A connection gets events in publish order: once MATCHING is in, all before it that pass are.
        output.wait_for(lambda line: _received_id(line) == ids[-1], f"event {ids[-1]} in onmessage")
        output.wait_for(lambda line: (call := _call(line)) and call[1].get("file_path") == "src/main.py",
                        "the handler's call for src/main.py")
    _assert_delivered(output, scenario, ids)


def _assert_delivered(output: Lines, scenario: Scenario, ids: list[str]) -> None:
    """Exactly the admitted events and MATCHING reached onmessage and then their handlers, in order."""
    records = [json.loads(line) for line in output.seen]
    received = [r["message"] for r in records if r["kind"] == "received" and r["message"].get("id") in ids]
    assert [message["id"] for message in received] == ids[len(scenario.excluded):]

    published_data = [message["data"] for message in received]
    calls = [call for call in map(_call, output.seen) if call and call[1] in published_data]
    assert calls == [(scenario.handlers[message["type"]], message["data"]) for message in received]
    handler, data = calls[-1]
    assert (handler, data["file_path"], data["change_type"], data["project_id"]) == \
        (scenario.handlers["file_change"], "src/main.py", "modified", "my-project")


def _received_id(line: str) -> str | None:
    record = json.loads(line)
    return record["message"].get("id") if record["kind"] == "received" else None


def _call(line: str) -> tuple[str, Any] | None:
    record = json.loads(line)
    return (record["handler"], record["args"][0]) if record["kind"] == "call" else None
