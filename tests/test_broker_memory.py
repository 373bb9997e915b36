"""The memory broker: ids with an epoch, bounded history, atomic publish, live feed."""

from __future__ import annotations

import pytest

from autopm_realtime.brokers.memory import MemoryBroker
from autopm_realtime.events import EventFilter, EventTypeRegistry, validate_publish

REGISTRY = EventTypeRegistry()


def drafts(count: int, project: str = "p", start: int = 0):
    return [validate_publish({"type": "file_change", "project_id": project,
                              "data": {"file_path": f"{start + i}.py", "change_type": "created"}},
                             REGISTRY) for i in range(count)]


async def test_ids_increase_and_carry_the_epoch():
    broker = MemoryBroker()
    events = await broker.publish(drafts(3))
    assert [e.id for e in events] == [f"{broker.epoch}-{n}" for n in (1, 2, 3)]
    assert [e.position for e in events] == [1, 2, 3]


async def test_another_runs_ids_are_unknown():
    first, second = MemoryBroker(), MemoryBroker()
    [old] = await first.publish(drafts(1))
    await second.publish(drafts(5))
    assert first.epoch != second.epoch
    page = await second.history(old.id, EventFilter(), None)
    assert page.recovered is False and list(page.events) == []


async def test_history_after_an_id_filters_and_limits():
    broker = MemoryBroker()
    events = await broker.publish(drafts(2, "a") + drafts(2, "b", 2) + drafts(2, "a", 4))
    page = await broker.history(events[0].id, EventFilter(project_id="a"), None)
    assert [e.data["file_path"] for e in page.events] == ["1.py", "4.py", "5.py"]
    page = await broker.history(events[0].id, EventFilter(), 2)
    assert [e.id for e in page.events] == [events[1].id, events[2].id]


async def test_latest_without_an_id():
    broker = MemoryBroker()
    await broker.publish(drafts(5))
    page = await broker.history(None, EventFilter(), 2)
    assert [e.data["file_path"] for e in page.events] == ["3.py", "4.py"]


async def test_history_is_bounded_and_eviction_is_detected():
    broker = MemoryBroker(history_size=3)
    events = await broker.publish(drafts(5))
    assert broker.health()["history_size"] == 3
    assert (await broker.history(events[0].id, EventFilter(), None)).recovered is False   # 2 was evicted
    page = await broker.history(events[1].id, EventFilter(), None)   # its successor 3 is still kept
    assert page.recovered is True and [e.position for e in page.events] == [3, 4, 5]


@pytest.mark.parametrize("suffix", ["99", "x", "", "-1"])
async def test_ids_from_the_future_or_garbage_are_unknown(suffix):
    broker = MemoryBroker()
    await broker.publish(drafts(2))
    page = await broker.history(f"{broker.epoch}-{suffix}", EventFilter(), None)
    assert page.recovered is False


async def test_listeners_get_every_event_in_order():
    broker = MemoryBroker()
    seen = []
    remove = broker.add_listener(seen.append)
    await broker.publish(drafts(3))
    remove()
    await broker.publish(drafts(1))
    assert [e.position for e in seen] == [1, 2, 3]
