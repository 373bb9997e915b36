"""The broker owns ordering, ids and history; the hub only listens to its live feed.

A broker implementation (memory.py, in this process; redis.py, Redis Streams) provides exactly this
interface, so the hub and the handlers never know which one is running.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..events import Event, EventDraft, EventFilter

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]


class BrokerUnavailableError(RuntimeError):
    """The broker cannot accept a publish right now (HTTP 503); nothing of the publish was kept."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Events after a position, oldest first.

    `recovered` is False when `since_id` was given but cannot be served: unknown (another run of the
    server, another broker, garbage) or older than the retained history. Then `events` is empty for a
    resume, because a partial replay would hide the gap from the client.
    """

    events: Sequence[Event]
    recovered: bool


class Broker(abc.ABC):
    """Numbers events, keeps a bounded history and feeds every listener every event, in order."""

    kind: str = "abstract"

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` on the IOLoop for every event from now on; returns the remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _deliver(self, event: Event) -> None:
        """Every listener gets every event: one that raises is logged and the others still run."""
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a listener failed on %r", event)

    async def start(self) -> None:
        """Connect to whatever backs the broker; the memory broker has nothing to do."""

    async def stop(self) -> None:
        """Release what `start` took."""

    @abc.abstractmethod
    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """Number and keep all drafts, or none of them (raise), then feed them to the listeners."""

    @abc.abstractmethod
    async def history(self, since_id: str | None, event_filter: EventFilter,
                      limit: int | None) -> HistoryPage:
        """Matching events after `since_id` (the oldest first, at most `limit`; None: all retained), or
        the latest `limit` matching events when `since_id` is None."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """`{"kind", "state", ...}` for `/api/v1/health`; state is `ok` or `degraded`."""
