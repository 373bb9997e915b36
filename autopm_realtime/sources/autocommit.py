"""Auto-commit: when to record a project's working tree in git, and the `auto_commit` events that say so.

The git work itself is `snapshot.Snapshotter`; this module schedules it and reports it. It learns of
changes from the broker's feed (`file_change` events of its project), never from the watcher directly.

When a commit runs (`trigger`):
- `quiet_period`: `quiet_seconds` after the last `file_change`, or `max_wait_seconds` after the first
  change that arrived since the previous attempt if writes keep coming;
- `schedule`: every `interval_seconds` while changes are pending (this is also how changes left pending by
  a failed or paused attempt are retried when nothing new arrives);
- `manual`: `await committer.commit_now()`.

Modes: `shadow` commits onto `refs/autopm/autosave/<branch>` and never touches the user's index, HEAD,
branch or files; `branch` commits on the current branch like `git add -A && git commit`, pausing (an
`error` event with a `reason`) during a merge, rebase, cherry-pick, revert or bisect, on a detached HEAD
and while another process holds `.git/index.lock`; `off` does nothing.

Events (`auto_commit`), each with `trigger` and `mode`:
- `start` `{changes_count}`: the number of changed paths reported since the last commit;
- `result` `{success: true, changes_count, ref, base, duration_ms, sha}`: `changes_count` is the number of
  paths the commit adds, modifies or deletes relative to its parent; when the working tree equals the
  parent's tree no commit is made and the result has `changes_count: 0` and no `sha`;
- `error` `{success: false, reason, changes_count, duration_ms}`: nothing was committed; the changes stay
  pending and the next trigger tries again. Errors never stop the server.

Only one commit runs at a time, on a single worker thread; changes that arrive during a commit stay
pending for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import string
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any, Callable

from dulwich.objects import check_identity
from tornado.ioloop import IOLoop

from ..events import Event
from . import Source, SourceContext
from .snapshot import CommitRefused, Outcome, Signature, Snapshotter

log = logging.getLogger(__name__)

MODES = ("shadow", "branch", "off")
DEFAULT_MESSAGE_TEMPLATE = "autopm: snapshot of {changes_count} change(s)"
DEFAULT_AUTHOR = "autopm-realtime <autopm-realtime@localhost>"
MESSAGE_PLACEHOLDERS = {
    "changes_count": "paths the commit adds, modifies or deletes",
    "trigger": "quiet_period, schedule or manual",
    "branch": "the branch (shadow mode on a detached HEAD: detached-<sha12>)",
    "timestamp": "the commit time, UTC ISO-8601 such as 2024-01-15T10:30:00Z",
    "mode": "shadow or branch",
}
_SAMPLE = {"changes_count": 3, "trigger": "manual", "branch": "main", "timestamp": "2024-01-15T10:30:00Z",
           "mode": "shadow"}
MAX_REASON_CHARS = 1_000


@dataclass(frozen=True)
class AutoCommitOptions:
    """Auto-commit settings; every bound has a default. (Suggested flags in parentheses.)"""

    mode: str | None = None                  # (--commit-mode) None: shadow in a git repository, else off
    quiet_seconds: float = 2.0               # (--commit-quiet) commit after this long without changes
    max_wait_seconds: float = 30.0           # (--commit-max-wait) ...but no later than this after the first
    interval_seconds: float = 900.0          # (--commit-interval) scheduled commit while changes are pending
    message_template: str = DEFAULT_MESSAGE_TEMPLATE   # (--commit-message) str.format, MESSAGE_PLACEHOLDERS
    author: str = DEFAULT_AUTHOR             # (--commit-author) author and committer, "Name <email>"
    max_pending_paths: int = 10_000          # (--commit-max-pending) distinct paths remembered; more are counted
    lock_retries: int = 5                    # (--commit-lock-retries) branch mode: retries on a held index.lock
    lock_backoff_seconds: float = 0.05       # (--commit-lock-backoff) first wait, doubled each retry
    ref_retries: int = 5                     # (--commit-ref-retries) retries when the ref moves under us

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"auto-commit mode {self.mode!r}: must be one of " + ", ".join(MODES))
        if not self.quiet_seconds > 0:
            raise ValueError("auto-commit quiet_seconds must be positive")
        if not self.max_wait_seconds >= self.quiet_seconds:
            raise ValueError("auto-commit max_wait_seconds must be at least quiet_seconds")
        if not self.interval_seconds > 0:
            raise ValueError("auto-commit interval_seconds must be positive")
        if self.max_pending_paths < 1:
            raise ValueError("auto-commit max_pending_paths must be at least 1")
        if self.lock_retries < 0 or self.ref_retries < 0 or not self.lock_backoff_seconds >= 0:
            raise ValueError("auto-commit retries and backoff must not be negative")
        try:
            check_identity(self.author.encode("utf-8"), "")
        except Exception:
            raise ValueError(f"auto-commit author {self.author!r}: must look like 'Name <email>'") from None
        for _, field, _, _ in string.Formatter().parse(self.message_template):
            if field is not None and field not in MESSAGE_PLACEHOLDERS:
                raise ValueError(f"auto-commit message template: unknown placeholder {{{field}}}; "
                                 "known: " + ", ".join(f"{{{name}}}" for name in MESSAGE_PLACEHOLDERS))
        try:
            sample = self.render_message(**_SAMPLE)
        except (ValueError, IndexError, KeyError) as error:
            raise ValueError(f"auto-commit message template: {error}") from None
        if not sample.strip():
            raise ValueError("auto-commit message template renders an empty message")

    def render_message(self, **values: Any) -> str:
        return self.message_template.format(**values)


class PendingChanges:
    """Paths reported changed since the last attempt took them: a bounded set, plus a count of the paths
    that did not fit. `first_at`/`last_at` time the changes that arrived since the last attempt; changes
    put back by a failed attempt have no time, so they wait for the schedule instead of retrying at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paths: set[str] = set()
        self.overflow = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    @property
    def count(self) -> int:
        return len(self.paths) + self.overflow

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, path: str, now: float) -> None:
        self._keep(path)
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def _keep(self, path: str) -> None:
        if path in self.paths:
            return
        if len(self.paths) < self.limit:
            self.paths.add(path)
        else:
            self.overflow += 1

    def take(self) -> PendingChanges:
        taken = PendingChanges(self.limit)
        taken.paths, taken.overflow = self.paths, self.overflow
        self.paths, self.overflow, self.first_at, self.last_at = set(), 0, None, None
        return taken

    def put_back(self, taken: PendingChanges) -> None:
        for path in taken.paths:
            self._keep(path)
        self.overflow += taken.overflow


def _inside_git_dir(path: str) -> bool:
    return ".git" in PurePath(path).parts


class AutoCommitter(Source):
    """Auto-commit for one project (see the module's docstring). The project directory must be the top of
    a git working tree (it holds `.git`); `mode=None` is then `shadow`, and otherwise `off`."""

    def __init__(self, context: SourceContext, options: AutoCommitOptions | None = None) -> None:
        super().__init__(context)
        self.options = options or AutoCommitOptions()
        self.mode = "off"                   # resolved by start()
        self._pending = PendingChanges(self.options.max_pending_paths)
        self._snapshotter = Snapshotter(context.project.path, ref_retries=self.options.ref_retries,
                                        lock_retries=self.options.lock_retries,
                                        lock_backoff_seconds=self.options.lock_backoff_seconds)
        self._loop: IOLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._commit_lock = asyncio.Lock()
        self._timer: object | None = None
        self._timer_at = 0.0
        self._last_attempt = 0.0
        self._tasks: set[asyncio.Future] = set()
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        path = self.context.project.path
        is_repository = os.path.exists(os.path.join(path, ".git"))
        requested = self.options.mode or ("shadow" if is_repository else "off")
        if requested != "off" and not is_repository:
            reason = f"auto-commit {requested} is off: {path} is not a git repository"
            log.error("project %s: %s", self.context.project.id, reason)
            await self._publish({"event": "error", "success": False, "changes_count": 0, "reason": reason,
                                 "mode": requested})
            return
        self.mode = requested
        if self.mode == "off":
            return
        self._loop = IOLoop.current()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"autocommit-{self.context.project.id}")
        self._last_attempt = self.context.clock.monotonic()
        self._remove_listener = self.context.on_event(self._on_event)

    async def stop(self) -> None:
        self._stopped = True
        self._cancel_timer()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._commit_lock:       # let a running commit finish and report
            pass
        if self._executor is not None:
            self._executor.shutdown(wait=False)    # idle: the lock above was free
            self._executor = None

    # --- what triggers a commit ---------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.type != "file_change" or self._stopped:
            return
        now = self.context.clock.monotonic()
        for key in ("file_path", "old_path"):
            path = event.data.get(key)
            if isinstance(path, str) and path and not _inside_git_dir(path):
                self._pending.add(path, now)
        self._arm()

    @property
    def pending_count(self) -> int:
        return self._pending.count

    def _next_due(self) -> tuple[float, str] | None:
        """When the next commit is due (by `context.clock.monotonic`) and its trigger; None: nothing
        pending. On a tie the quiet period wins."""
        if not self._pending:
            return None
        options, pending = self.options, self._pending
        due = [(self._last_attempt + options.interval_seconds, 1, "schedule")]
        if pending.first_at is not None and pending.last_at is not None:
            quiet = min(pending.last_at + options.quiet_seconds, pending.first_at + options.max_wait_seconds)
            due.append((quiet, 0, "quiet_period"))
        at, _, trigger = min(due)
        return at, trigger

    def due(self) -> str | None:
        """The trigger of a commit due now, or None."""
        next_due = self._next_due()
        if next_due is None or self.context.clock.monotonic() < next_due[0]:
            return None
        return next_due[1]

    async def fire_due(self) -> dict[str, Any] | None:
        """What the timer does: run the commit that is due now, if any and none is running (a running
        commit re-arms the timer when it ends). Returns the data of the closing event."""
        if self._stopped or self._commit_lock.locked():
            return None
        trigger = self.due()
        if trigger is None:
            self._arm()
            return None
        return await self._commit(trigger)

    def _arm(self) -> None:
        """Set the one timer for the next due commit (earlier than an armed one: re-set it)."""
        if self._loop is None or self._stopped:
            return
        next_due = self._next_due()
        if next_due is None:
            self._cancel_timer()
            return
        at = next_due[0]
        if self._timer is not None and self._timer_at <= at:
            return
        self._cancel_timer()
        self._timer_at = at
        delay = max(0.0, at - self.context.clock.monotonic())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._loop is not None:
            self._loop.remove_timeout(self._timer)
        self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.fire_due())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- committing ---------------------------------------------------------------------------

    async def commit_now(self, trigger: str = "manual") -> dict[str, Any] | None:
        """Commit now (after a running commit, if any) whether or not changes are pending. Returns the data
        of the `result` or `error` event as published; None when auto-commit is off or stopped."""
        return await self._commit(trigger)

    async def _commit(self, trigger: str) -> dict[str, Any] | None:
        async with self._commit_lock:
            if self._stopped or self._executor is None or self._loop is None:
                return None
            taken = self._pending.take()
            self._last_attempt = self.context.clock.monotonic()
            common = {"changes_count": taken.count, "trigger": trigger, "mode": self.mode}
            await self._publish({"event": "start", **common})
            begun = time.perf_counter()
            try:
                outcome = await self._loop.run_in_executor(self._executor, self._work, trigger,
                                                           self.context.clock.wall())
            except CommitRefused as refused:
                log.warning("project %s: auto-commit did not commit: %s", self.context.project.id,
                            refused.reason)
                data = self._error(common, refused.reason, taken)
            except Exception as error:
                log.exception("project %s: auto-commit failed", self.context.project.id)
                data = self._error(common, f"{type(error).__name__}: {error}", taken)
            else:
                data = self._result(common, outcome)
            data["duration_ms"] = round((time.perf_counter() - begun) * 1000, 3)
            data = await self._publish(data)
        self._arm()
        return data

    def _error(self, common: dict[str, Any], reason: str, taken: PendingChanges) -> dict[str, Any]:
        self._pending.put_back(taken)
        return {**common, "event": "error", "success": False, "reason": reason[:MAX_REASON_CHARS]}

    @staticmethod
    def _result(common: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
        data = {**common, "event": "result", "success": True, "changes_count": outcome.changes_count,
                "ref": outcome.ref, "base": outcome.base}
        if outcome.sha is not None:
            data["sha"] = outcome.sha
        return data

    def _work(self, trigger: str, wall: float) -> Outcome:
        """On the worker thread: the git side of one commit."""
        signature = Signature.now(self.options.author, wall)
        timestamp = datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

        def message(changes_count: int, branch: str) -> str:
            return self.options.render_message(changes_count=changes_count, trigger=trigger, branch=branch,
                                               timestamp=timestamp, mode=self.mode)
        if self.mode == "branch":
            return self._snapshotter.commit_branch(message, signature)
        return self._snapshotter.shadow(message, signature)

    async def _publish(self, data: dict[str, Any]) -> dict[str, Any]:
        """Publish; returns the data as published (with project_id and timestamp), or as given when the
        publish failed (logged: a broker outage must not stop auto-commit)."""
        try:
            event = await self.context.publish("auto_commit", data)
        except Exception:
            log.exception("project %s: could not publish an auto_commit event", self.context.project.id)
            return data
        return event.data if event is not None else data
