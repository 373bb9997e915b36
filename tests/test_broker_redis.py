"""The Redis Streams broker against a real Redis: ids, atomic batches, one order for every process,
history and resume, trimming; and outages of a scratch redis-server this module starts itself."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time

import pytest

from autopm_realtime.brokers import BrokerUnavailableError
from autopm_realtime.events import EventFilter, EventTypeRegistry, validate_publish
from support import SCRATCH_REDIS_PASSWORD, ScratchRedis, eventually, redis_answers, require

try:
    import redis

    from autopm_realtime.brokers.redis import RedisBroker, parse_stream_id, redact
except ImportError:   # the [redis] extra brings redis-py; require() below turns this into a skip/failure
    redis = None

REDIS_URL = os.environ.get("AUTOPM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REGISTRY = EventTypeRegistry()
PASSWORD = SCRATCH_REDIS_PASSWORD


def drafts(count: int, project: str = "p", start: int = 0):
    return [validate_publish({"type": "file_change", "project_id": project,
                              "data": {"file_path": f"{start + i}.py", "change_type": "created"}},
                             REGISTRY) for i in range(count)]


def paths(events) -> list[str]:
    return [e.data["file_path"] for e in events]


@pytest.fixture(scope="module")
def redis_py() -> None:
    require(redis is not None, "the Redis broker needs redis-py: pip install -e '.[redis]'")


@pytest.fixture(scope="module")
def redis_url(redis_py) -> str:
    require(redis_answers(REDIS_URL), f"no Redis answers at {REDIS_URL} (set AUTOPM_TEST_REDIS_URL)")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url) -> str:
    """A key prefix of this test alone; its stream is deleted afterwards (never a FLUSHDB)."""
    name = f"autopm-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{name}:events")
    client.close()


@pytest.fixture
def open_broker(io_loop):
    """`await open_broker(url, prefix, **options)`: a started broker, stopped after the test."""
    opened: list[RedisBroker] = []

    async def open_one(url: str, prefix: str, **options) -> RedisBroker:
        broker = RedisBroker(url, prefix=prefix, **{"history_size": 1000, **options})
        opened.append(broker)
        await broker.start()
        return broker

    yield open_one
    for broker in opened:
        io_loop.run_sync(broker.stop)


def recorded(broker: RedisBroker) -> list:
    seen: list = []
    broker.add_listener(seen.append)
    return seen


# --- against the machine's Redis -------------------------------------------------------------

async def test_ids_are_stream_ids_and_increase(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix)
    seen = recorded(broker)
    events = await broker.publish(drafts(3)) + await broker.publish(drafts(2, start=3))
    positions = [parse_stream_id(e.id) for e in events]
    assert all(positions) and [e.position for e in events] == positions
    assert positions == sorted(positions) and len(set(positions)) == 5
    await eventually(lambda: len(seen) == 5)
    assert [e.id for e in seen] == [e.id for e in events] and paths(seen) == paths(events)


async def test_batches_are_kept_whole_and_every_process_delivers_one_order(open_broker, redis_url,
                                                                           prefix):
    first, second = await open_broker(redis_url, prefix), await open_broker(redis_url, prefix)
    seen_first, seen_second = recorded(first), recorded(second)
    batches = await asyncio.gather(*(broker.publish(drafts(20, project=f"b{n}"))
                                     for n in range(10) for broker in (first, second)))
    published = sorted((e for batch in batches for e in batch), key=lambda e: e.position)
    await eventually(lambda: len(seen_first) == len(seen_second) == 400)
    assert [e.id for e in seen_first] == [e.id for e in seen_second] == [e.id for e in published]
    stream = (await first.history(None, EventFilter(), None)).events
    assert [e.id for e in stream] == [e.id for e in published]
    for batch in batches:   # each batch sits contiguous in the stream, in its own order
        start = [e.id for e in stream].index(batch[0].id)
        assert [e.id for e in stream[start:start + 20]] == [e.id for e in batch]


async def test_history_after_an_id_filters_and_limits(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix, read_batch=2)   # small chunks: several reads
    events = await broker.publish(drafts(2, "a") + drafts(2, "b", 2) + drafts(3, "a", 4))
    page = await broker.history(events[0].id, EventFilter(project_id="a"), None)
    assert page.recovered is True and paths(page.events) == ["1.py", "4.py", "5.py", "6.py"]
    page = await broker.history(events[0].id, EventFilter(project_id="a"), 2)
    assert paths(page.events) == ["1.py", "4.py"]
    page = await broker.history(events[0].id, EventFilter(), 3)
    assert [e.id for e in page.events] == [e.id for e in events[1:4]]
    page = await broker.history(events[-1].id, EventFilter(), None)
    assert page.recovered is True and list(page.events) == []


async def test_latest_without_an_id(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix, read_batch=2)
    await broker.publish(drafts(3, "a") + drafts(4, "b", 3) + drafts(1, "a", 7))
    page = await broker.history(None, EventFilter(), 2)
    assert page.recovered is True and paths(page.events) == ["6.py", "7.py"]
    page = await broker.history(None, EventFilter(project_id="a"), 3)
    assert paths(page.events) == ["1.py", "2.py", "7.py"]
    assert len((await broker.history(None, EventFilter(), None)).events) == 8
    assert list((await broker.history(None, EventFilter(), 0)).events) == []


@pytest.mark.parametrize("since", ["x", "", "1", "1-", "-1", "1-2-3", "١-١", f"{2 ** 64}-0", "1-1",
                                   "newer"])
async def test_unknown_or_garbage_ids_are_not_recovered(open_broker, redis_url, prefix, since):
    broker = await open_broker(redis_url, prefix)
    events = await broker.publish(drafts(3))
    if since == "newer":
        ms, seq = events[-1].position
        since = f"{ms}-{seq + 1}"
    page = await broker.history(since, EventFilter(), None)
    assert page.recovered is False and list(page.events) == []


async def test_trimming_keeps_about_history_size(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix, history_size=20)
    events = []
    for n in range(30):
        events += await broker.publish(drafts(10, start=10 * n))
    client = redis.Redis.from_url(redis_url)
    length = client.xlen(broker.key)
    node = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    client.close()
    assert 20 <= length <= 20 + node   # `~` trims whole nodes only
    kept = (await broker.history(None, EventFilter(), None)).events
    assert [e.id for e in kept] == [e.id for e in events[-length:]]
    assert (await broker.history(events[0].id, EventFilter(), None)).recovered is False   # trimmed
    page = await broker.history(kept[0].id, EventFilter(), None)
    assert page.recovered is True and len(page.events) == length - 1


async def test_a_failing_listener_does_not_stop_the_feed(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix)
    seen = recorded(broker)

    def broken(event):
        raise RuntimeError("listener bug")

    broker.add_listener(broken)
    await broker.publish(drafts(1))
    await broker.publish(drafts(1, start=1))
    await eventually(lambda: len(seen) == 2)   # the reader went on after the first failure


async def test_entries_that_are_not_events_are_skipped(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix)
    seen = recorded(broker)
    client = redis.Redis.from_url(redis_url)
    client.xadd(broker.key, {"something": "else"})
    client.xadd(broker.key, {"draft": b"\xff not json"})
    client.close()
    [event] = await broker.publish(drafts(1))
    await eventually(lambda: len(seen) == 1)
    assert seen[0].id == event.id and broker.health()["last_delivered_id"] == event.id
    assert [e.id for e in (await broker.history(None, EventFilter(), None)).events] == [event.id]


async def test_health_when_connected(open_broker, redis_url, prefix):
    broker = await open_broker(redis_url, prefix)
    seen = recorded(broker)
    [event] = await broker.publish(drafts(1))
    await eventually(lambda: len(seen) == 1)
    health = broker.health()
    assert health["kind"] == "redis" and health["state"] == "ok" and health["connected"] is True
    assert health["stream"] == f"{prefix}:events" and health["last_delivered_id"] == event.id
    assert health["reconnects"] == 0 and health["last_error"] is None
    assert health["lag_ms"] == 0   # it has read everything there is


ANCIENT_ID = "1000-0"   # a stream id from 1970: an event whose age is 56 years
ANCIENT_DRAFT = json.dumps({"type": "progress_update", "project_id": "p", "timestamp": "1970-01-01T00:00:01Z",
                            "data": {"completed_tasks": 1, "total_tasks": 2, "progress_percentage": 50.0}})


async def read_an_ancient_event(broker, url: str) -> None:
    """Put an entry with an id from 1970 on the broker's (empty) stream and wait until it is delivered."""
    seen = recorded(broker)
    client = redis.Redis.from_url(url)
    client.xadd(broker.key, {"draft": ANCIENT_DRAFT}, id=ANCIENT_ID)
    client.close()
    await eventually(lambda: len(seen) == 1)
    assert seen[0].id == ANCIENT_ID


async def test_an_idle_stream_is_not_a_late_one(open_broker, redis_url, prefix):
    """`lag_ms` is how far the reader is behind the stream, not the age of the newest event: a reader
    that has read an entry stamped 1970 is 0 behind (it used to report 56 years)."""
    broker = await open_broker(redis_url, prefix)
    await read_an_ancient_event(broker, redis_url)
    assert broker.health()["lag_ms"] == 0   # the XREAD that brought it left nothing unread


def test_urls_are_shown_without_password(redis_py):
    assert redact("redis://:pw@host:6379/0") == "redis://host:6379/0"
    assert redact("rediss://user:pw@host/1") == "rediss://user@host/1"
    assert redact("unix:///tmp/r.sock?db=2&password=pw") == "unix:///tmp/r.sock?db=2"


# --- outages, with a scratch redis-server ------------------------------------------------------

@pytest.fixture
def scratch_redis(tmp_path, redis_py):
    """`scratch_redis(appendonly=...)`: a started (not yet ready) server, killed after the test."""
    require(shutil.which("redis-server") is not None, "redis-server is not on PATH")
    servers: list[ScratchRedis] = []

    def start(appendonly: bool = False) -> ScratchRedis:
        server = ScratchRedis(tmp_path, appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


FAST_RETRY = {"retry_initial": 0.05, "retry_max": 0.2, "socket_timeout": 0.5}


async def test_publish_while_redis_is_down_fails_fast(open_broker, scratch_redis):
    server = scratch_redis()
    await server.ready()
    broker = await open_broker(server.url, "outage", **FAST_RETRY)
    server.kill()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as raised:
        await broker.publish(drafts(2))
    assert time.monotonic() - started < 1.0
    assert f"127.0.0.1:{server.port}" in str(raised.value) and PASSWORD not in str(raised.value)
    health = broker.health()
    assert health["state"] == "degraded" and health["connected"] is False
    assert health["last_error"] and PASSWORD not in repr(health)
    assert health["url"] == f"redis://127.0.0.1:{server.port}/0"
    with pytest.raises(BrokerUnavailableError):
        await broker.history(None, EventFilter(), None)


async def test_a_broker_started_while_redis_is_down_comes_up_with_it(open_broker, scratch_redis,
                                                                     caplog):
    server = scratch_redis()
    server.kill()
    broker = await open_broker(server.url, "late", **FAST_RETRY)
    assert broker.health()["state"] == "degraded"
    seen = recorded(broker)
    await asyncio.sleep(0.5)   # time for several retries (at most 0.2 s apart), which must stay quiet
    warnings = [r for r in caplog.records if r.name == "autopm_realtime.brokers.redis"
                and r.levelname == "WARNING"]
    assert len(warnings) == 1 and PASSWORD not in warnings[0].getMessage()
    assert broker.health()["lag_ms"] >= 500   # down since it started, at least the 0.5 s slept
    server.start()
    await server.ready()
    await eventually(lambda: broker.health()["state"] == "ok")
    events = await broker.publish(drafts(2))
    await eventually(lambda: len(seen) == 2)
    assert [e.id for e in seen] == [e.id for e in events]
    await eventually(lambda: broker.health()["lag_ms"] == 0)


async def restart_under(broker, server) -> None:
    """Kill the broker's Redis, wait until the broker has noticed, start it again and wait until it
    answers (the broker's reader may still be backing off)."""
    server.kill()
    await eventually(lambda: broker.health()["connected"] is False)
    server.start()
    await server.ready()


async def test_lag_after_a_reconnect_is_the_outage_not_the_age_of_the_last_event(open_broker, scratch_redis):
    """Between reconnecting and its first XREAD coming back (up to `block_ms` on a quiet stream) the
    reader must not report the age of the last event it delivered — on a quiet night, hours: from the
    failure until an XREAD succeeds, `lag_ms` is how long it has been cut off."""
    server = scratch_redis()
    await server.ready()
    broker = await open_broker(server.url, "lag", **FAST_RETRY)
    await read_an_ancient_event(broker, server.url)
    await restart_under(broker, server)
    lags: list[int] = []
    await eventually(lambda: lags.append(broker.health()["lag_ms"]) or lags[-1] == 0)
    assert max(lags) < 60_000, f"lag_ms after the reconnect went up to {max(lags)} ms"


async def test_restart_without_persistence_delivers_everything_once(open_broker, scratch_redis):
    server = scratch_redis()
    await server.ready()
    slow_retry = {**FAST_RETRY, "retry_initial": 0.3, "retry_max": 0.6}   # to publish before it is back
    broker = await open_broker(server.url, "restart", **slow_retry)
    seen = recorded(broker)
    before = await broker.publish(drafts(5))
    await eventually(lambda: len(seen) == 5)
    await restart_under(broker, server)
    after = await broker.publish(drafts(3, start=5))   # most likely before the reader is back
    assert after[0].position > before[-1].position   # time-based ids keep growing on an empty stream
    after += await broker.publish(drafts(2, start=8))
    await eventually(lambda: len(seen) == 10)
    assert [e.id for e in seen] == [e.id for e in before + after]
    health = broker.health()
    assert health["state"] == "ok" and health["reconnects"] >= 1
    assert health["last_delivered_id"] == after[-1].id
    page = await broker.history(before[-1].id, EventFilter(), None)
    assert page.recovered is False   # that Redis lost it


async def test_restart_with_appendonly_keeps_history_and_resume(open_broker, scratch_redis):
    server = scratch_redis(appendonly=True)
    await server.ready()
    broker = await open_broker(server.url, "durable", **FAST_RETRY)
    seen = recorded(broker)
    before = await broker.publish(drafts(4))
    await eventually(lambda: len(seen) == 4)
    await restart_under(broker, server)
    await eventually(lambda: broker.health()["state"] == "ok")
    assert broker.health()["reconnects"] >= 1
    latest = await broker.history(None, EventFilter(), None)
    assert [e.id for e in latest.events] == [e.id for e in before]
    page = await broker.history(before[1].id, EventFilter(), None)
    assert page.recovered is True and [e.id for e in page.events] == [e.id for e in before[2:]]
    after = await broker.publish(drafts(2, start=4))
    await eventually(lambda: len(seen) == 6)
    assert [e.id for e in seen] == [e.id for e in before + after]
