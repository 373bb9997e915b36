"""Progress and risk for one project: `progress_update` from its task files, `risk_alert` from rules.

The tracker reads the task files (`tasks.py`) at start and again whenever the broker's feed carries a
`file_change` for one of them, and publishes `progress_update` only when the numbers change. It follows
`auto_commit` events on the same feed. Every rule is evaluated after each read, after each auto-commit
event and every `evaluate_seconds` (for the rules that depend on time); an alert is published when its
episode begins (`state: raised`) and when it ends (`state: cleared`), never on a recompute in between.
docs/tasks.md documents the rules, their data fields and the options.

All work happens in one background task, so reads, rules and publishes never interleave; file reading
runs in the default executor, because task files may be large (up to `max_file_bytes` each, up to
`max_task_files` of them), `**` globs walk directory trees, and a slow disk or network share must not
stall the IOLoop that serves every connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from tornado.ioloop import IOLoop, PeriodicCallback

from ..events import Event
from . import Source, SourceContext
from .tasks import (DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TASK_FILES, DEFAULT_MAX_TASKS_PER_FILE,
                    DEFAULT_TASK_GLOBS, Progress, Task, TaskGlobs, TaskSources, measure)

log = logging.getLogger(__name__)

DAY = 86400.0

# rule id: (severity when raised, what it is about)
RULES = {
    "stalled": ("medium", "Progress stalled"),
    "velocity": ("high", "Progress slowing down"),
    "overdue": ("high", "Tasks overdue"),
    "regression": ("medium", "Completed tasks reopened"),
    "commit_failures": ("high", "Auto-commit failing"),
    "task_file_invalid": ("medium", "Invalid task file"),
}
CLEARED_SEVERITY = "low"
NAMED_IN_MESSAGE = 5     # tasks named in an alert's message
LISTED_IN_DATA = 20      # tasks listed in an alert's data
TITLE_CHARACTERS = 120   # a task title is cut to this in alerts
MAX_COMPLETION_RECORDS = 100_000


@dataclass(frozen=True)
class ProgressOptions:
    """How the tracker reads task files and judges risk. Every bound is here with its default."""

    task_globs: tuple[str, ...] = DEFAULT_TASK_GLOBS   # relative to the project root; see docs/tasks.md
    evaluate_seconds: float = 60.0                     # how often the time-based rules are evaluated
    stall_seconds: float = 3 * DAY                     # progress unchanged this long with tasks open
    velocity_window_seconds: float = 7 * DAY           # the two windows the velocity rule compares
    velocity_min_tasks: int = 2                        # completions in the earlier window to judge by
    commit_failures_threshold: int = 3                 # consecutive auto-commit errors
    max_task_files: int = DEFAULT_MAX_TASK_FILES
    max_tasks_per_file: int = DEFAULT_MAX_TASKS_PER_FILE
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.task_globs, str):
            raise ValueError("task_globs must be a sequence of globs, not one string")
        object.__setattr__(self, "task_globs", tuple(self.task_globs))
        for name in ("evaluate_seconds", "stall_seconds", "velocity_window_seconds",
                     "velocity_min_tasks", "commit_failures_threshold", "max_task_files",
                     "max_tasks_per_file", "max_file_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        TaskGlobs(self.task_globs)   # raises ValueError naming a bad glob


@dataclass(frozen=True)
class Alert:
    """A rule's current finding. `file` makes a slot per file; `episode` changes only when the finding
    is new enough to publish again (a constant for rules raised once per episode)."""

    rule: str
    message: str
    details: dict[str, Any]
    episode: Hashable = None
    file: str | None = None

    @property
    def key(self) -> str:
        return self.rule if self.file is None else f"{self.rule}:{self.file}"

    def data(self, state: str) -> dict[str, Any]:
        raised = state == "raised"
        data = {"severity": RULES[self.rule][0] if raised else CLEARED_SEVERITY,
                "message": self.message if raised else f"Resolved: {self.message}",
                "state": state, "rule": self.rule, "alert_key": self.key}
        if self.file is not None:
            data["file"] = self.file
        return {**data, **self.details} if raised else data


class ProgressTracker(Source):
    """`progress_update` and `risk_alert` for one project; see the module's docstring and docs/tasks.md."""

    def __init__(self, context: SourceContext, options: ProgressOptions = ProgressOptions()) -> None:
        super().__init__(context)
        self.options = options
        self.sources = TaskSources(context.project.path, options.task_globs,
                                   max_files=options.max_task_files, max_tasks=options.max_tasks_per_file,
                                   max_bytes=options.max_file_bytes)
        self.progress: Progress | None = None       # as last measured (None before the first read)
        self._published: Progress | None = None     # as last published
        self._progress_since = 0.0                  # monotonic time `progress` last changed
        self._tasks: dict[str, Task] = {}
        self._completions: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=MAX_COMPLETION_RECORDS)
        self._reopened: dict[str, Task] = {}
        self._commit_failures = 0
        self._commit_reason: str | None = None
        self._raised: dict[str, Alert] = {}
        self._rescan = False
        self._dirty: set[str] = set()
        self._wakeup = asyncio.Event()
        self._requested = self._completed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._worker: asyncio.Future[None] | None = None
        self._timer: PeriodicCallback | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._stopped = False

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._remove_listener = self.context.on_event(self._on_event)
        self._rescan = True
        self._request()
        self._worker = asyncio.ensure_future(self._work())
        self._timer = PeriodicCallback(self.evaluate, self.options.evaluate_seconds * 1000)
        self._timer.start()

    async def stop(self) -> None:
        self._stopped = True
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._timer is not None:
            self._timer.stop()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._release_waiters(None)

    async def evaluate(self) -> None:
        """Evaluate every rule now and publish what changed; the timer calls this every
        `evaluate_seconds`, and tests call it after moving their clock."""
        self._request()
        await self.settled()

    async def settled(self) -> None:
        """Return once everything seen so far (file changes, auto-commit events, evaluations) has been
        read, judged and published."""
        if self._stopped or self._worker is None or self._completed >= self._requested:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._requested, waiter))
        await waiter

    # --- input ------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.type == "file_change":
            paths = self.sources.affected(event.data)
            if paths:
                self._dirty |= paths
                self._request()
        elif event.type == "auto_commit":
            if event.data.get("event") == "error":
                self._commit_failures += 1
                reason = event.data.get("reason")
                self._commit_reason = reason[:200] if isinstance(reason, str) and reason else None
                self._request()
            elif event.data.get("event") == "result" and event.data.get("success") is True \
                    and self._commit_failures:
                self._commit_failures = 0
                self._request()

    def _request(self) -> None:
        if not self._stopped:
            self._requested += 1
            self._wakeup.set()

    def _release_waiters(self, through: int | None) -> None:
        keep = []
        for target, waiter in self._waiters:
            if through is None or target <= through:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((target, waiter))
        self._waiters = keep

    # --- the work ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            through = self._requested
            try:
                await self._refresh()
            except Exception:
                log.exception("project %s: progress tracking failed; it goes on with the next change",
                              self.context.project.id)
            self._completed = through
            self._release_waiters(through)

    async def _refresh(self) -> None:
        rescan, paths = self._rescan, self._dirty
        self._rescan, self._dirty = False, set()
        if rescan or paths:
            update = await IOLoop.current().run_in_executor(
                None, self.sources.collect, None if rescan else frozenset(paths),
                frozenset(self.sources.files))
            self.sources.apply(update)
            self._observe(self.sources.tasks())
        await self._publish_progress()
        await self._reconcile()

    def _observe(self, tasks: list[Task]) -> None:
        """Note completions (open → done) and regressions (done → open) against the previous read."""
        now = self.context.clock.monotonic()
        current = {task.key: task for task in tasks}
        if self.progress is not None:
            before = self._tasks
            completed = sum(1 for k, t in current.items() if t.done and k in before and not before[k].done)
            if completed:
                self._completions.append((now, completed))
            self._reopened.update((k, t) for k, t in current.items()
                                  if not t.done and k in before and before[k].done)
        self._reopened = {k: current[k] for k in self._reopened if k in current and not current[k].done}
        self._tasks = current
        progress = measure(tasks)
        if progress != self.progress:
            self.progress, self._progress_since = progress, now

    async def _publish_progress(self) -> None:
        progress = self.progress
        if progress is None or progress == self._published:
            return
        if self._published is None and progress.total == 0:
            return   # no task files (yet): nothing to report
        await self._publish("progress_update", {"progress_percentage": progress.percentage,
                                                "completed_tasks": progress.completed,
                                                "total_tasks": progress.total})
        self._published = progress   # after the publish: a broker that failed is tried again

    async def _reconcile(self) -> None:
        current = {alert.key: alert for alert in self._alerts()}
        for key, alert in current.items():
            before = self._raised.get(key)
            if before is None or before.episode != alert.episode:
                await self._publish("risk_alert", alert.data("raised"))
                self._raised[key] = alert
                log.log(logging.WARNING if alert.rule == "task_file_invalid" else logging.INFO,
                        "project %s: risk %s raised: %s", self.context.project.id, key, alert.message)
        for key in [key for key in self._raised if key not in current]:
            await self._publish("risk_alert", self._raised[key].data("cleared"))
            del self._raised[key]
            log.info("project %s: risk %s cleared", self.context.project.id, key)

    async def _publish(self, event_type: str, data: dict[str, Any]) -> None:
        if not self._stopped:
            await self.context.publish(event_type, data)

    # --- the rules --------------------------------------------------------------------------------

    def _alerts(self) -> Iterable[Alert]:
        now, wall = self.context.clock.monotonic(), self.context.clock.wall()
        progress = self.progress
        open_tasks = progress.open if progress is not None else 0
        options = self.options

        idle = now - self._progress_since
        if open_tasks and idle >= options.stall_seconds:
            yield Alert("stalled", f"Progress stalled: unchanged for {_duration(idle)} with "
                                   f"{_count(open_tasks, 'task')} open",
                        {"stalled_seconds": round(idle), "open_tasks": open_tasks,
                         "progress_percentage": progress.percentage})

        window = options.velocity_window_seconds
        while self._completions and self._completions[0][0] <= now - 2 * window:
            self._completions.popleft()
        recent = sum(n for at, n in self._completions if at > now - window)
        earlier = sum(n for at, n in self._completions if at <= now - window)
        if open_tasks and earlier >= options.velocity_min_tasks and 2 * recent < earlier:
            yield Alert("velocity", f"Progress slowing down: {_count(recent, 'task')} completed in the "
                                    f"last {_duration(window)}, {earlier} in the {_duration(window)} before",
                        {"completed_recent": recent, "completed_before": earlier,
                         "window_seconds": window})

        late = sorted((t for t in self._tasks.values() if t.overdue(wall)),
                      key=lambda t: (t.deadline, t.title))
        if late:
            yield Alert("overdue", f"{_count(len(late), 'task')} overdue: {_names(late, due=True)}",
                        {"count": len(late), "tasks": _listed(late)}, frozenset(t.key for t in late))

        if self._reopened:
            reopened = list(self._reopened.values())
            yield Alert("regression", f"{_count(len(reopened), 'completed task')} reopened: "
                                      f"{_names(reopened)}",
                        {"count": len(reopened), "tasks": _listed(reopened)},
                        frozenset(self._reopened))

        failures = self._commit_failures
        if failures >= options.commit_failures_threshold:
            reason = f": {self._commit_reason}" if self._commit_reason else ""
            yield Alert("commit_failures", f"Auto-commit failed {failures} times in a row{reason}",
                        {"consecutive_failures": failures,
                         **({"reason": self._commit_reason} if self._commit_reason else {})})

        for path, error in self.sources.errors().items():
            yield Alert("task_file_invalid", f"Invalid task file {error}",
                        {"reason": error.reason, **({"line": error.line} if error.line else {})},
                        str(error), file=path)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    for unit, size in (("day", DAY), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            amount = round(seconds / size, 1)
            return f"{amount:g} {unit}" + ("" if amount == 1 else "s")
    return _count(round(seconds), "second")


def _title(task: Task) -> str:
    title = task.title
    return title if len(title) <= TITLE_CHARACTERS else title[:TITLE_CHARACTERS - 1] + "…"


def _names(tasks: list[Task], due: bool = False) -> str:
    shown = [_title(t) + (f" (due {t.due})" if due else "") for t in tasks[:NAMED_IN_MESSAGE]]
    more = len(tasks) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _listed(tasks: list[Task]) -> list[dict[str, Any]]:
    return [{"title": _title(t), "file": t.file, **({"due": t.due} if t.due else {})}
            for t in tasks[:LISTED_IN_DATA]]
