"""Sources turn what happens in a project's working tree into events, through the broker only.

Three sources run per project: the file watcher (`watcher.py`), auto-commit (`autocommit.py`) and
progress and risk (`progress.py`). They never touch connections, and they do not call each other: the
watcher publishes `file_change`, and the others learn about changes by listening to the broker's feed for
their project (`SourceContext.on_event`), so a change reaches every part of the system the same way.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..brokers import Broker
from ..events import Event, EventTypeRegistry, EventValidationError, validate_publish

if TYPE_CHECKING:   # project.py starts the sources, so it imports this package, not the reverse
    from ..project import Project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clock:
    """Time as sources see it; tests pass their own to cover time-based rules without waiting."""

    monotonic: Callable[[], float] = time.monotonic   # for intervals and timers
    wall: Callable[[], float] = time.time             # for dates (task due dates, timestamps)


@dataclass
class SourceContext:
    """What a source is given: its project, a way to publish, the broker's feed, and a clock.

    Everything here is used on the IOLoop thread; a source with a thread of its own (the watcher) hands
    its results to the loop with `IOLoop.add_callback` first.
    """

    project: Project
    broker: Broker
    registry: EventTypeRegistry
    max_event_bytes: int
    clock: Clock = field(default_factory=Clock)

    async def publish(self, event_type: str, data: dict[str, Any]) -> Event | None:
        """Validate and publish one event for this project. A source's mistake (invalid data) is logged,
        never raised into the source's loop, and the event is dropped: the server stays up."""
        try:
            draft = validate_publish({"type": event_type, "project_id": self.project.id, "data": data},
                                     self.registry, self.max_event_bytes)
        except EventValidationError as error:
            log.error("source for project %s produced an invalid %s event: %s", self.project.id,
                      event_type, error)
            return None
        [event] = await self.broker.publish([draft])
        return event

    def on_event(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call `listener(event)` for every event of this project (on the IOLoop); returns the remover."""
        project_id = self.project.id

        def for_this_project(event: Event) -> None:
            if event.project_id == project_id:
                listener(event)
        return self.broker.add_listener(for_this_project)


class Source(abc.ABC):
    """One kind of source for one project, started and stopped with the project."""

    def __init__(self, context: SourceContext) -> None:
        self.context = context

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin watching/scheduling. Must return promptly; long work runs in the background."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every thread, timer and task this source started; after this nothing is published."""
