"""Everything one server process runs, built from `Settings`: broker, hub, projects and their sources.

The standalone command and the Jupyter extension both build a `RealtimeService`, mount the same handlers
on it (`web.app.routes`) and start and stop it with their server.
"""

from __future__ import annotations

import time
from typing import Callable

from .brokers import Broker
from .brokers.memory import MemoryBroker
from .config import Settings
from .events import EventTypeRegistry, parse_extra_event_type
from .connection import QueueLimits
from .hub import Hub, PumpLimits
from .project import Project, ProjectCatalog, ProjectSources, source_options
from .sources import SourceContext


class RealtimeService:
    """`run_sources=False` serves events without watching, snapshotting or tracking any project (tests of
    the transports use it; so could a relay that only forwards published events)."""

    def __init__(self, settings: Settings, broker: Broker | None = None, *, run_sources: bool = True) -> None:
        self.settings = settings
        self.registry = EventTypeRegistry(parse_extra_event_type(spec) for spec in settings.event_types)
        self.broker = broker or MemoryBroker(settings.history)
        self.hub = Hub(self.broker, self.registry, heartbeat_seconds=settings.heartbeat,
                       limits=QueueLimits(settings.queue_max_messages, settings.queue_max_bytes),
                       pump=PumpLimits(settings.fanout_slice_ms / 1000, settings.fanout_backlog))
        self.projects = ProjectCatalog(Project(spec.id, spec.path) for spec in settings.projects)
        self.sources: list[ProjectSources] = []
        if run_sources:
            options = source_options(settings)
            self.sources = [ProjectSources(SourceContext(project, self.broker, self.registry,
                                                         settings.max_event_bytes), options)
                            for project in self.projects.configured.values()]
        self.started_at = time.time()
        self._remove_observer: Callable[[], None] | None = None

    async def start(self) -> None:
        await self.broker.start()
        self._remove_observer = self.broker.add_listener(self.projects.observe)
        self.hub.start()
        for sources in self.sources:
            await sources.start()

    async def stop(self) -> None:
        """Sources first, so nothing is published into a hub or broker that is going away."""
        for sources in self.sources:
            await sources.stop()
        self.hub.stop()
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None
        await self.broker.stop()
