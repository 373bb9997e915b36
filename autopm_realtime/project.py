"""The projects a server serves: each one's sources, and the latest progress known for each.

A `Project` is an id and a directory. `ProjectSources` runs its watcher, auto-commit and progress tracker
together. The `ProjectCatalog` remembers the latest `progress_update` per project id from the broker's
feed, so `GET /api/v1/projects` answers without reading history.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .events import Event
from .sources import Source, SourceContext
from .sources.autocommit import AutoCommitOptions, AutoCommitter
from .sources.progress import ProgressOptions, ProgressTracker
from .sources.tasks import DEFAULT_TASK_GLOBS
from .sources.watcher import FileWatcher, WatcherOptions

if TYPE_CHECKING:   # config.py checks settings with source_options(), so it imports this module
    from .config import Settings

DEFAULT_MAX_PUBLISHED_PROJECTS = 1_000


@dataclass(frozen=True)
class Project:
    id: str
    path: Path


class ProjectCatalog:
    """Configured projects, plus projects only seen in published events (the most recent
    `max_published` of them, so a publisher inventing ids cannot grow it without bound)."""

    def __init__(self, projects: Iterable[Project],
                 max_published: int = DEFAULT_MAX_PUBLISHED_PROJECTS) -> None:
        self.configured = {project.id: project for project in projects}
        self._max_published = max_published
        self._progress: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._published: collections.OrderedDict[str, None] = collections.OrderedDict()

    def observe(self, event: Event) -> None:
        """Broker listener: note projects and their latest progress."""
        project_id = event.project_id
        if project_id not in self.configured:
            self._published[project_id] = None
            self._published.move_to_end(project_id)
            if len(self._published) > self._max_published:
                forgotten, _ = self._published.popitem(last=False)
                self._progress.pop(forgotten, None)
        if event.type == "progress_update":
            self._progress[project_id] = {
                "progress_percentage": event.data["progress_percentage"],
                "completed_tasks": event.data["completed_tasks"],
                "total_tasks": event.data["total_tasks"],
                "timestamp": event.data.get("timestamp", event.timestamp),
                "event_id": event.id,
            }

    def describe(self) -> list[dict[str, Any]]:
        listed = [{"id": p.id, "path": str(p.path), "configured": True} for p in self.configured.values()]
        listed += [{"id": pid, "path": None, "configured": False} for pid in self._published]
        for entry in listed:
            entry["progress"] = self._progress.get(entry["id"])
        return listed


# --- a project's sources -------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceOptions:
    """Each source's options, built from `Settings`; `watcher` is None with `--no-watch`."""

    watcher: WatcherOptions | None
    autocommit: AutoCommitOptions
    progress: ProgressOptions


def source_options(settings: Settings) -> SourceOptions:
    """Raises ValueError with the source's own explanation when a value cannot work."""
    watcher = None if settings.no_watch else WatcherOptions(
        ignore=settings.ignore, coalesce_seconds=settings.coalesce_ms / 1000,
        max_pending_paths=settings.watch_max_pending, max_queued_events=settings.watch_max_queued,
        max_restarts=settings.watch_max_restarts)
    autocommit = AutoCommitOptions(
        mode=settings.auto_commit, quiet_seconds=settings.commit_quiet,
        max_wait_seconds=settings.commit_max_wait, interval_seconds=settings.commit_interval,
        message_template=settings.commit_message, author=settings.commit_author,
        max_pending_paths=settings.commit_max_pending, lock_retries=settings.commit_lock_retries,
        ref_retries=settings.commit_ref_retries)
    progress = ProgressOptions(
        task_globs=settings.tasks or DEFAULT_TASK_GLOBS, evaluate_seconds=settings.risk_interval,
        stall_seconds=settings.stall_after, velocity_window_seconds=settings.velocity_window,
        velocity_min_tasks=settings.velocity_min_tasks,
        commit_failures_threshold=settings.commit_failures, max_task_files=settings.max_task_files,
        max_tasks_per_file=settings.max_tasks_per_file, max_file_bytes=settings.max_task_file_bytes)
    return SourceOptions(watcher, autocommit, progress)


class ProjectSources:
    """A project's watcher, auto-commit and progress tracker, started and stopped together.

    They talk only through the broker: the watcher publishes `file_change`; the other two listen for it.
    """

    def __init__(self, context: SourceContext, options: SourceOptions) -> None:
        self.project_id = context.project.id
        self.sources: list[Source] = [AutoCommitter(context, options.autocommit),
                                      ProgressTracker(context, options.progress)]
        self.watcher = FileWatcher(context, options.watcher) if options.watcher is not None else None
        if self.watcher is not None:   # listeners first, so they hear the watcher's first events
            self.sources.append(self.watcher)

    async def start(self) -> None:
        for source in self.sources:
            await source.start()

    async def ready(self) -> bool:
        """Wait until the watcher (if any) watches the tree and has indexed it; False if it gave up."""
        return self.watcher is None or await self.watcher.ready()

    async def stop(self) -> None:
        for source in reversed(self.sources):
            await source.stop()
