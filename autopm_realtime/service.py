"""Everything one server process runs, built from `Settings`: broker, hub and projects.

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
from .hub import Hub, QueueLimits
from .project import Project, ProjectCatalog


class RealtimeService:
    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.registry = EventTypeRegistry(parse_extra_event_type(spec) for spec in settings.event_types)
        self.broker = broker or MemoryBroker(settings.history)
        self.hub = Hub(self.broker, self.registry, heartbeat_seconds=settings.heartbeat,
                       limits=QueueLimits(settings.queue_max_messages, settings.queue_max_bytes))
        self.projects = ProjectCatalog(Project(spec.id, spec.path) for spec in settings.projects)
        self.started_at = time.time()
        self._remove_observer: Callable[[], None] | None = None

    async def start(self) -> None:
        await self.broker.start()
        self._remove_observer = self.broker.add_listener(self.projects.observe)
        self.hub.start()

    async def stop(self) -> None:
        self.hub.stop()
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None
        await self.broker.stop()
