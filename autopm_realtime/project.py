"""The projects a server serves, and the latest progress known for each.

Sources (the watcher, auto-commit, progress) attach to a `Project` in a later issue; here a project is its
id and its directory, and the catalog remembers the latest `progress_update` per project id from the
broker's feed, so `GET /api/v1/projects` answers without reading history.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .events import Event

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
