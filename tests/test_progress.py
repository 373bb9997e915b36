"""The progress tracker: real task files, a memory broker, and a clock the test moves."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from autopm_realtime.brokers.memory import MemoryBroker
from autopm_realtime.events import DEFAULT_MAX_EVENT_BYTES, Event, EventTypeRegistry
from autopm_realtime.project import Project
from autopm_realtime.sources import Clock, SourceContext
from autopm_realtime.sources.progress import RULES, ProgressOptions, ProgressTracker

TIMEOUT = 5.0
DAY = 86400.0
START_WALL = datetime(2026, 6, 1, 12, tzinfo=timezone.utc).timestamp()


class Harness:
    """One tracker for a project in `root`, a broker, a fake clock, and the events it published."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = root
        self.monotonic, self.wall = 1000.0, START_WALL
        self.broker = MemoryBroker()
        self.context = SourceContext(Project("my-project", root), self.broker, EventTypeRegistry(),
                                     DEFAULT_MAX_EVENT_BYTES,
                                     Clock(monotonic=lambda: self.monotonic, wall=lambda: self.wall))
        self.published: asyncio.Queue[Event] = asyncio.Queue()
        self.broker.add_listener(self._collect)
        self.tracker = ProgressTracker(self.context, ProgressOptions(**options))

    def _collect(self, event: Event) -> None:
        if event.type in ("progress_update", "risk_alert"):
            self.published.put_nowait(event)

    def write(self, name: str, content: str | list[dict[str, Any]]) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content, indent=1))

    async def changed(self, path: str, change: str = "modified", **extra: Any) -> None:
        """Tell the tracker what the watcher would, and wait until it has acted on it."""
        await self.context.publish("file_change", {"file_path": path, "change_type": change, **extra})
        await self.tracker.settled()

    async def edit(self, name: str, content: str | list[dict[str, Any]]) -> None:
        existed = (self.root / name).exists()
        self.write(name, content)
        await self.changed(name, "modified" if existed else "created")

    async def commit(self, event: str, **data: Any) -> None:
        await self.context.publish("auto_commit", {"event": event, "changes_count": 1, **data})
        await self.tracker.settled()

    async def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds
        await self.tracker.evaluate()

    async def next(self) -> Event:
        return await asyncio.wait_for(self.published.get(), TIMEOUT)

    async def progress(self) -> tuple[float, int, int]:
        event = await self.next()
        assert event.type == "progress_update", event.data
        return (event.data["progress_percentage"], event.data["completed_tasks"],
                event.data["total_tasks"])

    async def alert(self, state: str, rule: str) -> dict[str, Any]:
        event = await self.next()
        assert event.type == "risk_alert", event.data
        assert (event.data["state"], event.data["rule"]) == (state, rule), event.data
        return event.data

    async def quiet(self) -> None:
        """Nothing more was published for what the tracker has seen so far (and one more evaluation)."""
        await self.tracker.evaluate()
        assert self.published.empty(), self.published.get_nowait().data


@pytest.fixture
def make(io_loop, tmp_path):
    made: list[Harness] = []

    def harness(**options: Any) -> Harness:
        made.append(Harness(tmp_path, **options))
        return made[-1]
    yield harness
    for each in made:
        io_loop.run_sync(each.tracker.stop)


def checklist(*done: bool) -> str:
    return "".join(f"- [{'x' if d else ' '}] task {i}\n" for i, d in enumerate(done))


async def test_initial_progress_counts_every_task_file(io_loop, make):
    h = make()
    h.write("TODO.md", "# Plan\n- [x] Design (weight: 3)\n- [ ] Build\n")
    h.write(".autopm/tasks.json", {"tasks": [{"id": "a", "title": "A", "status": "done"},
                                             {"id": "b", "title": "B", "status": "in_progress"}]})
    h.write("docs/TODO.md", "- [ ] not at the root: not a default task file\n")
    await h.tracker.start()
    assert await h.progress() == (66.7, 2, 4)     # weights 3 + 1 done of 3 + 1 + 1 + 1
    await h.quiet()


async def test_no_task_files_no_progress_until_one_appears(io_loop, make):
    h = make()
    await h.tracker.start()
    await h.quiet()
    await h.edit("TODO.md", checklist(True, False))
    assert await h.progress() == (50.0, 1, 2)


async def test_progress_is_published_only_when_the_numbers_change(io_loop, make):
    h = make()
    h.write("TODO.md", checklist(True, False, False))
    await h.tracker.start()
    assert await h.progress() == (33.3, 1, 3)
    await h.edit("TODO.md", "# Renamed and reworded\n" + checklist(True, False, False).replace("task", "job"))
    await h.changed("src/main.py")
    await h.changed("TODO.md")
    await h.quiet()
    await h.edit("TODO.md", checklist(True, True, False))
    assert await h.progress() == (66.7, 2, 3)
    await h.edit(".autopm/tasks.json", [{"id": "x", "title": "X", "status": "todo"}])
    assert await h.progress() == (50.0, 2, 4)
    await h.quiet()


async def test_deleting_and_moving_task_files(io_loop, make):
    h = make()
    h.write("TODO.md", checklist(True, False))
    h.write(".autopm/tasks.json", [{"id": "x", "title": "X", "status": "done"}])
    await h.tracker.start()
    assert await h.progress() == (66.7, 2, 3)
    (h.root / "TODO.md").rename(h.root / "DONE.md")
    await h.changed("DONE.md", "moved", old_path="TODO.md")
    assert await h.progress() == (100.0, 1, 1)
    (h.root / "DONE.md").rename(h.root / "TODO.md")
    await h.changed(str(h.root / "TODO.md"), "moved", old_path=str(h.root / "DONE.md"))   # absolute
    assert await h.progress() == (66.7, 2, 3)
    (h.root / ".autopm" / "tasks.json").unlink()
    (h.root / ".autopm").rmdir()
    await h.changed(".autopm", "deleted")     # a watcher may only report the directory
    assert await h.progress() == (50.0, 1, 2)
    (h.root / "TODO.md").unlink()
    await h.changed("TODO.md", "deleted")
    assert await h.progress() == (0.0, 0, 0)  # the last task file went: say so
    await h.quiet()


async def test_stalled_is_raised_once_and_cleared_by_progress(io_loop, make):
    h = make(stall_seconds=3 * DAY)
    h.write("TODO.md", checklist(True, False))
    await h.tracker.start()
    assert await h.progress() == (50.0, 1, 2)
    await h.advance(3 * DAY - 1)
    await h.quiet()
    await h.advance(1)
    alert = await h.alert("raised", "stalled")
    assert alert == {**alert, "severity": "medium", "alert_key": "stalled", "open_tasks": 1,
                     "stalled_seconds": 259200,
                     "message": "Progress stalled: unchanged for 3 days with 1 task open"}
    await h.advance(DAY)
    await h.quiet()                            # same episode: not again
    await h.edit("TODO.md", checklist(True, True, False))
    assert await h.progress() == (66.7, 2, 3)
    cleared = await h.alert("cleared", "stalled")
    assert cleared == {"severity": "low", "state": "cleared", "rule": "stalled", "alert_key": "stalled",
                       "message": "Resolved: Progress stalled: unchanged for 3 days with 1 task open",
                       "project_id": "my-project", "timestamp": cleared["timestamp"]}
    await h.edit("TODO.md", checklist(True, True, True))
    assert await h.progress() == (100.0, 3, 3)
    await h.advance(10 * DAY)
    await h.quiet()                            # nothing open: nothing stalls


async def test_velocity_compares_the_last_window_with_the_one_before(io_loop, make):
    h = make(velocity_window_seconds=DAY, velocity_min_tasks=2)
    h.write("TODO.md", checklist(False, False, False, False, False, False, False))
    await h.tracker.start()
    assert await h.progress() == (0.0, 0, 7)
    await h.edit("TODO.md", checklist(True, True, True, True, False, False, False))
    assert await h.progress() == (57.1, 4, 7)
    await h.advance(DAY - 1)
    await h.quiet()
    await h.advance(1)                        # 4 completed in the window before, none in this one
    alert = await h.alert("raised", "velocity")
    assert alert == {**alert, "severity": "high", "completed_recent": 0, "completed_before": 4,
                     "window_seconds": DAY,
                     "message": "Progress slowing down: 0 tasks completed in the last 1 day, 4 in the "
                                "1 day before"}
    await h.edit("TODO.md", checklist(True, True, True, True, True, False, False))
    assert await h.progress() == (71.4, 5, 7)
    await h.quiet()                           # 1 against 4: still slowing, not raised again
    await h.edit("TODO.md", checklist(True, True, True, True, True, True, False))
    assert await h.progress() == (85.7, 6, 7)
    await h.alert("cleared", "velocity")      # 2 against 4: half is not slower than half
    await h.advance(DAY)                      # 2 before, 0 now
    await h.alert("raised", "velocity")
    await h.advance(DAY)                      # nothing in either window: nothing to judge by
    await h.alert("cleared", "velocity")
    await h.quiet()


async def test_overdue_names_the_tasks_and_follows_the_set(io_loop, make):
    h = make()
    h.write(".autopm/tasks.json", [
        {"id": "a", "title": "Write docs", "status": "todo", "due": "2026-06-01"},
        {"id": "b", "title": "Ship", "status": "in_progress", "due": "2026-06-02T00:00:00Z"},
        {"id": "c", "title": "Done already", "status": "done", "due": "2026-01-01"},
    ])
    h.write("TODO.md", "- [ ] Later (due: 2026-06-03)\n")
    await h.tracker.start()
    assert await h.progress() == (25.0, 1, 4)
    await h.quiet()                           # 2026-06-01 12:00: due today is not overdue yet
    await h.advance(12 * 3600)                # midnight: the date has passed, the time is reached
    alert = await h.alert("raised", "overdue")
    assert alert == {**alert, "severity": "high", "count": 2,
                     "message": "2 tasks overdue: Ship (due 2026-06-02T00:00:00Z), Write docs (due "
                                "2026-06-01)",
                     "tasks": [{"title": "Ship", "file": ".autopm/tasks.json", "due": "2026-06-02T00:00:00Z"},
                               {"title": "Write docs", "file": ".autopm/tasks.json", "due": "2026-06-01"}]}
    await h.advance(3600)
    await h.quiet()
    await h.advance(2 * DAY)                  # another one is late: the alert says so, once
    alert = await h.alert("raised", "overdue")
    assert alert["count"] == 3 and alert["message"].endswith("Later (due 2026-06-03)")
    await h.edit("TODO.md", "- [x] Later (due: 2026-06-03)\n")
    assert await h.progress() == (50.0, 2, 4)
    assert (await h.alert("raised", "overdue"))["count"] == 2
    await h.edit(".autopm/tasks.json", [{"id": "a", "title": "Write docs", "status": "done"},
                                        {"id": "b", "title": "Ship", "status": "done"}])
    assert await h.progress() == (100.0, 3, 3)
    await h.alert("cleared", "overdue")
    await h.quiet()


async def test_regression_when_completed_tasks_reopen(io_loop, make):
    h = make()
    h.write("TODO.md", "- [x] Build\n  - [x] Test\n- [ ] Ship\n")
    h.write(".autopm/tasks.json", [{"id": "r", "title": "Release", "status": "done"}])
    await h.tracker.start()
    assert await h.progress() == (75.0, 3, 4)
    await h.edit("TODO.md", "- [x] Build\n  - [ ] Test\n- [ ] Ship\n")
    assert await h.progress() == (50.0, 2, 4)
    alert = await h.alert("raised", "regression")
    assert alert == {**alert, "severity": "medium", "count": 1,
                     "message": "1 completed task reopened: Test",
                     "tasks": [{"title": "Test", "file": "TODO.md"}]}
    await h.edit("TODO.md", "- [x] Build\n  - [ ] Test\n- [ ] Ship, reworded\n")
    await h.quiet()
    await h.edit(".autopm/tasks.json", [{"id": "r", "title": "Release", "status": "in_progress"}])
    assert await h.progress() == (25.0, 1, 4)
    assert (await h.alert("raised", "regression"))["message"] == "2 completed tasks reopened: Test, Release"
    await h.edit(".autopm/tasks.json", [{"id": "r", "title": "Release", "status": "done"}])
    assert await h.progress() == (50.0, 2, 4)
    assert (await h.alert("raised", "regression"))["count"] == 1
    await h.edit("TODO.md", "- [x] Build\n  - [x] Test\n- [ ] Ship, reworded\n")
    assert await h.progress() == (75.0, 3, 4)
    await h.alert("cleared", "regression")
    await h.edit("TODO.md", "- [x] Build\n- [ ] Ship, reworded\n")   # a removed task is no regression
    assert await h.progress() == (66.7, 2, 3)
    await h.quiet()


async def test_consecutive_commit_failures(io_loop, make):
    h = make(commit_failures_threshold=3)
    await h.tracker.start()
    await h.commit("error", success=False, reason="index.lock exists")
    await h.commit("start")
    await h.commit("error", success=False, reason="disk full")
    await h.quiet()
    await h.commit("error", success=False, reason="disk full")
    alert = await h.alert("raised", "commit_failures")
    assert alert == {**alert, "severity": "high", "consecutive_failures": 3, "reason": "disk full",
                     "message": "Auto-commit failed 3 times in a row: disk full"}
    await h.commit("error", success=False)
    await h.quiet()
    await h.commit("result", success=True, sha="0" * 40)
    await h.alert("cleared", "commit_failures")
    await h.commit("error", success=False)
    await h.commit("error", success=False)
    await h.commit("result", success=True)    # resets the count
    await h.commit("error", success=False)
    await h.quiet()


async def test_a_malformed_task_file_is_reported_once_and_the_rest_still_counts(io_loop, make, caplog):
    h = make()
    h.write("TODO.md", checklist(True, False))
    h.write(".autopm/tasks.json", '[\n {"id": "a", "title": "A", "status": "done"}\n {"id": "b"}\n]')
    with caplog.at_level(logging.WARNING, logger="autopm_realtime.sources.progress"):
        await h.tracker.start()
        assert await h.progress() == (50.0, 1, 2)
        alert = await h.alert("raised", "task_file_invalid")
        assert alert == {**alert, "severity": "medium", "file": ".autopm/tasks.json", "line": 3,
                         "alert_key": "task_file_invalid:.autopm/tasks.json",
                         "reason": "invalid JSON: Expecting ',' delimiter",
                         "message": "Invalid task file .autopm/tasks.json:3:2: invalid JSON: "
                                    "Expecting ',' delimiter"}
        await h.edit(".autopm/tasks.json", (h.root / ".autopm/tasks.json").read_text() + "  ")
        await h.quiet()                       # the same error again: not reported again
    assert [r.getMessage() for r in caplog.records] == [
        "project my-project: risk task_file_invalid:.autopm/tasks.json raised: Invalid task file "
        ".autopm/tasks.json:3:2: invalid JSON: Expecting ',' delimiter"]

    await h.edit(".autopm/tasks.json", [{"id": "a", "title": "A", "status": "done"},
                                        {"id": "b", "title": "B", "status": "todo", "weight": 2}])
    assert await h.progress() == (40.0, 2, 4)
    cleared = await h.alert("cleared", "task_file_invalid")
    assert cleared["file"] == ".autopm/tasks.json" and cleared["severity"] == "low"

    await h.edit("TODO.md", "- [x] task 0\n- [ ] task 1 (weight: lots)\n- [x] task 2\n")
    alert = await h.alert("raised", "task_file_invalid")   # numbers unchanged: the last valid read counts
    assert (alert["file"], alert["line"]) == ("TODO.md", 2)
    await h.edit("TODO.md", "- [x] task 0\n- [ ] task 1 (weight: 2)\n- [x] task 2 (due: never)\n")
    assert (await h.alert("raised", "task_file_invalid"))["line"] == 3   # another error: told again
    (h.root / "TODO.md").unlink()
    await h.changed("TODO.md", "deleted")
    assert await h.progress() == (33.3, 1, 2)
    assert (await h.alert("cleared", "task_file_invalid"))["file"] == "TODO.md"
    await h.quiet()


async def test_the_timer_evaluates_the_time_based_rules(io_loop, make):
    h = make(evaluate_seconds=0.02, stall_seconds=60)
    h.write("TODO.md", checklist(False))
    await h.tracker.start()
    assert await h.progress() == (0.0, 0, 1)
    h.monotonic += 60                          # no evaluate() from the test: the timer notices
    await h.alert("raised", "stalled")


async def test_stop_ends_every_listener_and_timer(io_loop, make):
    h = make(evaluate_seconds=0.02, stall_seconds=60, commit_failures_threshold=1)
    h.write("TODO.md", checklist(False))
    listeners = len(h.broker._listeners)
    await h.tracker.start()
    assert len(h.broker._listeners) == listeners + 1
    assert await h.progress() == (0.0, 0, 1)
    await h.tracker.stop()
    assert len(h.broker._listeners) == listeners
    assert not h.tracker._timer.is_running() and h.tracker._worker.done()
    h.monotonic += 3600
    await h.edit("TODO.md", checklist(True))
    await h.commit("error", success=False)
    await h.tracker.evaluate()
    await asyncio.wait_for(h.tracker.settled(), TIMEOUT)
    follower = ProgressTracker(h.context, ProgressOptions())   # proves the feed still flows
    await follower.start()
    await follower.settled()
    await follower.stop()
    assert (await h.progress()) == (100.0, 1, 1)   # the follower's, not the stopped tracker's
    assert h.published.empty()


def test_options_are_checked():
    assert ProgressOptions(task_globs=["TODO.md"]).task_globs == ("TODO.md",)
    with pytest.raises(ValueError, match="^stall_seconds must be positive, got 0$"):
        ProgressOptions(stall_seconds=0)
    with pytest.raises(ValueError, match="relative to the project root"):
        ProgressOptions(task_globs=("../TODO.md",))
    with pytest.raises(ValueError, match="not one string"):
        ProgressOptions(task_globs="TODO.md")


def test_docs_list_every_option_default_and_rule_severity():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "tasks.md").read_text()

    def table(start: str, end: str | None = None) -> dict[str, str]:
        section = docs[docs.index(start):docs.index(end) if end else None]
        return dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, re.MULTILINE))
    documented = table("## Options")
    for option in dataclasses.fields(ProgressOptions):
        default = option.default
        shown = (", ".join(f"`{g}`" for g in default) if isinstance(default, tuple)
                 else f"{default:.0f}" if float(default).is_integer() else str(default))
        assert documented[option.name].startswith(shown), (option.name, documented.get(option.name))
    rules = table("## Risk rules", "### Data fields")
    assert {rule: severity.strip() for rule, severity in rules.items()} == \
        {rule: severity for rule, (severity, _) in RULES.items()}
