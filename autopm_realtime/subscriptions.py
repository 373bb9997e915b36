"""Which connections want an event, found without looking at the ones that do not.

A connection's filter is one project (or all) times a set of types (or all). The index keeps one bucket per
(project, type) pair a filter names, with None standing for "all", so an event of type T in project P is
wanted exactly by the connections in the four buckets (P, T), (P, all), (all, T) and (all, all). A
connection sits in one bucket per type it names, and an event has one type, so no connection is found
twice. A publish then costs the number of connections that match, not the number connected.
"""

from __future__ import annotations

from typing import Generic, Hashable, Iterator, TypeVar

from .events import Event, EventFilter

Member = TypeVar("Member", bound=Hashable)
BucketKey = tuple[str | None, str | None]   # (project id, event type); None: all


class SubscriptionIndex(Generic[Member]):
    """Members (connections) by the (project, type) pairs their filters admit."""

    def __init__(self) -> None:
        self._buckets: dict[BucketKey, dict[Member, None]] = {}   # dicts: ordered sets

    def add(self, member: Member, event_filter: EventFilter) -> None:
        for key in _keys(event_filter):
            self._buckets.setdefault(key, {})[member] = None

    def remove(self, member: Member, event_filter: EventFilter) -> None:
        """Forget `member` as filed under `event_filter` (the filter it was added with)."""
        for key in _keys(event_filter):
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.pop(member, None)
                if not bucket:
                    del self._buckets[key]

    def matching(self, event: Event) -> list[Member]:
        """Every member whose filter admits `event`, each once."""
        found: list[Member] = []
        buckets = self._buckets
        for key in ((event.project_id, event.type), (event.project_id, None), (None, event.type),
                    (None, None)):
            bucket = buckets.get(key)
            if bucket:
                found.extend(bucket)
        return found


def _keys(event_filter: EventFilter) -> Iterator[BucketKey]:
    """The buckets a filter is filed under; a filter with an empty type set matches nothing and has none."""
    project = event_filter.project_id
    if event_filter.types is None:
        yield project, None
    else:
        for name in event_filter.types:
            yield project, name
