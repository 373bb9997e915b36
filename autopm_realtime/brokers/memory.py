"""The in-process broker: a ring buffer of recent events and synchronous delivery on the IOLoop."""

from __future__ import annotations

import collections
import secrets
from typing import Any, Sequence

from ..events import Event, EventDraft, EventFilter
from . import Broker, HistoryPage

DEFAULT_HISTORY_SIZE = 10_000


class MemoryBroker(Broker):
    """Ids are `<epoch>-<sequence>`.

    The epoch is random per broker instance, so an id from a previous run of the server is recognised as
    unknown (and answered with `recovered: false`) instead of being compared with this run's sequence.
    """

    kind = "memory"

    def __init__(self, history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        super().__init__()
        if history_size < 1:
            raise ValueError("history size must be at least 1")
        self.epoch = secrets.token_hex(4)
        self._sequence = 0
        self._history: collections.deque[Event] = collections.deque(maxlen=history_size)

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        events = []
        for draft in drafts:
            self._sequence += 1
            event = Event(draft, f"{self.epoch}-{self._sequence}", self._sequence)
            self._history.append(event)
            events.append(event)
        for event in events:
            self._deliver(event)
        return events

    async def history(self, since_id: str | None, event_filter: EventFilter,
                      limit: int | None) -> HistoryPage:
        if since_id is None:
            latest = []
            for event in reversed(self._history):
                if len(latest) == limit:
                    break
                if event_filter.matches(event):
                    latest.append(event)
            return HistoryPage(latest[::-1], recovered=True)
        since = self._sequence_of(since_id)
        if since is None or since > self._sequence:
            return HistoryPage((), recovered=False)
        oldest_kept = self._history[0].position if self._history else self._sequence + 1
        if since < oldest_kept - 1:
            return HistoryPage((), recovered=False)   # events between it and the oldest kept are gone
        skip = since - oldest_kept + 1                 # positions are dense, so this indexes the deque
        newer = (self._history[i] for i in range(max(skip, 0), len(self._history)))
        page = []
        for event in newer:
            if event_filter.matches(event):
                page.append(event)
                if len(page) == limit:
                    break
        return HistoryPage(page, recovered=True)

    def _sequence_of(self, event_id: str) -> int | None:
        epoch, _, sequence = event_id.partition("-")
        # Only ids this broker could have issued: ASCII digits ("²".isdigit() is true), no leading zero.
        if epoch != self.epoch or not (sequence.isascii() and sequence.isdigit()) or sequence.startswith("0"):
            return None
        return int(sequence)

    def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": "ok", "epoch": self.epoch,
                "last_event_id": f"{self.epoch}-{self._sequence}" if self._sequence else None,
                "history_size": len(self._history), "history_capacity": self._history.maxlen}
