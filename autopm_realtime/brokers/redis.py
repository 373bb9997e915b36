"""The Redis Streams broker: one stream shared by every server process.

Redis numbers the events (`XADD *`), so every process sees one order; each process delivers to its own
listeners from a reader task that follows the stream, including the events it published itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..events import Event, EventDraft, EventFilter, dumps
from . import Broker, BrokerUnavailableError, HistoryPage

log = logging.getLogger(__name__)

DRAFT_FIELD = b"draft"
STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")   # [0-9], not \d: Unicode digits are no ids
MAX_ID_PART = 2 ** 64 - 1

Entry = tuple[bytes, dict[bytes, bytes]]


def redact(url: str) -> str:
    """The URL without its password (in the authority or as a `password=` query argument), for logs,
    errors and health: those are shown to clients and operators who must not learn it."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{host}" if user else host
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k != "password"])
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))   # urlunsplit drops unix:///'s //


def parse_stream_id(text: str) -> tuple[int, int] | None:
    """`(ms, seq)` of a complete stream id, or None when Redis would not accept it as one."""
    match = STREAM_ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms <= MAX_ID_PART and seq <= MAX_ID_PART else None


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task that loops over Redis commands and wait until it has ended.

    One `cancel()` is not enough on Python 3.11: redis-py wraps every socket write in
    `asyncio.wait_for`, which returns normally instead of raising CancelledError when the cancel lands
    just as the write completes (CPython gh-86296, fixed in 3.12). The loop then goes on and a plain
    `cancel(); await task` never returns, so a server would hang on SIGTERM. Cancel until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled():
        task.result()   # an error it ended with is raised here, as `await task` would


class RedisBroker(Broker):
    """Events live in the stream `<prefix>:events`; an event's id is its stream id (`<ms>-<seq>`).

    Stream ids are unique for the life of the key and time based, so an id is never reused: after Redis
    restarts empty (no persistence) new ids are still larger than the old ones (unless the Redis host's
    clock went back), and an old id is answered with `recovered: false` because the stream no longer
    holds it.

    Bounds (all keyword arguments):
    - `history_size`: entries kept (`XADD MAXLEN ~`, trimmed by whole stream nodes, so slightly more
      may be kept); there is no default because the setting is shared with the memory broker.
    - `read_batch` (500): entries per XREAD and per XRANGE/XREVRANGE chunk of a history scan, so one
      reply never holds the whole stream.
    - `block_ms` (1000): how long one XREAD waits for new entries; the reader's connection answers
      at least this often, which also confirms it is alive.
    - `retry_initial` (0.1 s) doubling to `retry_max` (5 s), with jitter: the reader's reconnect
      delays, so that many processes do not hammer a Redis that is coming back all at once.
    - `socket_timeout` (2 s): bounds connecting and every command, so a publish to a Redis that does
      not answer fails within it (HTTP 503) instead of holding the publisher.
    """

    kind = "redis"

    def __init__(self, url: str, *, history_size: int, prefix: str = "autopm", read_batch: int = 500,
                 block_ms: int = 1000, retry_initial: float = 0.1, retry_max: float = 5.0,
                 socket_timeout: float = 2.0) -> None:
        super().__init__()
        if history_size < 1 or read_batch < 1 or block_ms < 1:
            raise ValueError("history size, read batch and block time must be at least 1")
        if not 0 < retry_initial <= retry_max or socket_timeout <= 0:
            raise ValueError("retry delays and the socket timeout must be positive, initial <= max")
        self.url = redact(url)
        self.key = f"{prefix}:events"
        self.history_size = history_size
        self.read_batch = read_batch
        self.block_ms = block_ms
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        # No client-side retries: a retried MULTI/EXEC whose reply was lost would add the batch twice.
        options = dict(retry=Retry(NoBackoff(), 0), socket_connect_timeout=socket_timeout, protocol=2)
        self._client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout, **options)
        # The reader's XREAD blocks for block_ms, so its own connection needs a longer read timeout.
        self._reader_client = aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout + block_ms / 1000, **options)
        self._reader: asyncio.Task[None] | None = None
        self._last_id: str | None = None     # the reader's position: the last id it delivered
        self._connected = False              # False after any Redis error until the reader next succeeds
        self._reader_down = False            # the reader's own failure, for one warning per outage
        self._down_since = 0.0               # wall time the reader failed, until an XREAD succeeds again
        self._caught_up = False              # the reader's last XREAD left nothing unread
        self._last_error: str | None = None
        self._reconnects = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Fix the reader's position at the current end of the stream, then follow it.

        The position is taken before returning, so every event published after `start` is delivered.
        When Redis is down the server still starts (degraded in health) and the reader keeps trying;
        its position is then the end of the stream when it first gets through.
        """
        try:
            self._last_id = await self._stream_end()
            self._connected = self._caught_up = True
        except RedisError as error:
            self._reader_failed(error)
        self._reader = asyncio.create_task(self._follow(), name=f"redis broker reader {self.key}")

    async def stop(self) -> None:
        if self._reader is not None:
            await cancel_and_wait(self._reader)
            self._reader = None
        self._connected = False
        await self._reader_client.aclose()
        await self._client.aclose()

    # --- publishing and history ----------------------------------------------------------------

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """One MULTI/EXEC of XADDs: the batch is kept whole and contiguous, or not at all.

        Listeners are not called here; this process's reader delivers the batch like any other, so
        every process delivers in the stream's order. If the connection breaks after EXEC was sent the
        batch may have been kept although this raises: Redis cannot tell us, and retrying could add it
        twice.
        """
        if not drafts:
            return []
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for draft in drafts:
                    payload = dumps({"type": draft.type, "project_id": draft.project_id,
                                     "timestamp": draft.timestamp, "data": draft.data})
                    pipe.xadd(self.key, {DRAFT_FIELD: payload}, maxlen=self.history_size,
                              approximate=True)
                ids = await pipe.execute()
        except RedisError as error:
            raise self._unavailable("publish", error) from None
        return [self._event(entry_id.decode("ascii"), draft) for entry_id, draft in zip(ids, drafts)]

    async def history(self, since_id: str | None, event_filter: EventFilter,
                      limit: int | None) -> HistoryPage:
        try:
            if since_id is None:
                return HistoryPage(await self._latest(event_filter, limit), recovered=True)
            return await self._after(since_id, event_filter, limit)
        except RedisError as error:
            raise self._unavailable("history", error) from None

    async def _latest(self, event_filter: EventFilter, limit: int | None) -> list[Event]:
        """Scan backwards from the newest entry, a chunk at a time, until `limit` match."""
        latest: list[Event] = []
        end = "+"
        while limit is None or len(latest) < limit:
            entries = await self._client.xrevrange(self.key, end, "-", count=self.read_batch)
            for event in self._decode(entries):
                if event_filter.matches(event):
                    latest.append(event)
                    if len(latest) == limit:
                        break
            if len(entries) < self.read_batch:
                break
            end = "(" + entries[-1][0].decode("ascii")
        return latest[::-1]

    async def _after(self, since_id: str, event_filter: EventFilter, limit: int | None) -> HistoryPage:
        """Events strictly after `since_id`, if it is still in the stream.

        Each chunk is read from its anchor inclusive (first `since_id`, then the last entry read) and
        must start with that anchor: if trimming removed it between two chunks, the page would hide a
        gap, so the answer is `recovered: false` as if the id had been trimmed before the request.
        """
        if parse_stream_id(since_id) is None:
            return HistoryPage((), recovered=False)
        page: list[Event] = []
        anchor = since_id
        while True:
            entries = await self._client.xrange(self.key, anchor, "+", count=self.read_batch + 1)
            if not entries or entries[0][0].decode("ascii") != anchor:
                return HistoryPage((), recovered=False)   # unknown, trimmed, or newer than the last
            for event in self._decode(entries[1:]):
                if event_filter.matches(event):
                    if len(page) == limit:
                        return HistoryPage(page, recovered=True)
                    page.append(event)
            if len(page) == limit or len(entries) <= self.read_batch:
                return HistoryPage(page, recovered=True)
            anchor = entries[-1][0].decode("ascii")

    # --- the reader ----------------------------------------------------------------------------

    async def _follow(self) -> None:
        """XREAD after the last delivered id, forever; on errors back off and resume from it, so an
        outage neither repeats nor skips an event that Redis still holds."""
        failures = 0
        while True:
            try:
                if self._last_id is None:
                    self._last_id = await self._stream_end()
                    self._caught_up = True
                elif self._reader_down:
                    await self._reader_client.ping()   # an XREAD would confirm only after block_ms
                self._reader_up()
                reply = await self._reader_client.xread({self.key: self._last_id},
                                                        count=self.read_batch, block=self.block_ms)
            except RedisError as error:
                self._reader_failed(error)
                delay = min(self.retry_max, self.retry_initial * 2 ** failures)
                failures += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            failures = 0
            self._down_since = 0.0
            self._caught_up = sum(len(entries) for _key, entries in reply) < self.read_batch
            for _key, entries in reply:
                for raw_id, fields in entries:
                    self._last_id = raw_id.decode("ascii")
                    event = self._entry_event(self._last_id, fields)
                    if event is None:
                        continue
                    try:
                        self._deliver(event)
                    except Exception:   # a listener's bug must not stop the feed
                        log.exception("redis broker: a listener failed on event %s", event.id)

    def _reader_up(self) -> None:
        self._connected = True
        if self._reader_down:
            self._reader_down = False
            self._reconnects += 1
            log.info("redis broker: reader reconnected to %s; resuming after %s", self.url, self._last_id)

    def _reader_failed(self, error: RedisError) -> None:
        self._connected = self._caught_up = False
        self._last_error = f"{type(error).__name__}: {error}"
        if not self._down_since:
            self._down_since = time.time()
        if not self._reader_down:
            self._reader_down = True
            log.warning("redis broker: lost %s (%s); reconnecting with backoff, resuming after %s",
                        self.url, self._last_error, self._last_id)

    async def _stream_end(self) -> str:
        newest = await self._reader_client.xrevrange(self.key, "+", "-", count=1)
        return newest[0][0].decode("ascii") if newest else "0-0"

    # --- helpers -------------------------------------------------------------------------------

    def _decode(self, entries: Sequence[Entry]) -> list[Event]:
        events = (self._entry_event(raw_id.decode("ascii"), fields) for raw_id, fields in entries)
        return [event for event in events if event is not None]

    def _entry_event(self, entry_id: str, fields: dict[bytes, bytes]) -> Event | None:
        """The event of a stream entry, or None (logged) for an entry that is not one of ours: one
        foreign write must not stop the feed or make history fail."""
        try:
            obj = json.loads(fields[DRAFT_FIELD])
            draft = EventDraft(obj["type"], obj["project_id"], obj["timestamp"], obj["data"])
        except (KeyError, TypeError, ValueError) as error:
            log.warning("redis broker: skipped entry %s of %s, not an event: %r", entry_id, self.key,
                        error)
            return None
        return self._event(entry_id, draft)

    @staticmethod
    def _event(entry_id: str, draft: EventDraft) -> Event:
        ms, _, seq = entry_id.partition("-")
        return Event(draft, entry_id, (int(ms), int(seq)))

    def _unavailable(self, action: str, error: RedisError) -> BrokerUnavailableError:
        self._connected = False
        self._last_error = f"{type(error).__name__}: {error}"
        return BrokerUnavailableError(f"{action} failed: Redis at {self.url}: {self._last_error}")

    def health(self) -> dict[str, Any]:
        """From the reader's state only (no I/O). `lag_ms` is how far the live feed is behind the
        stream: 0 when the reader's last XREAD left nothing unread (however old the newest event is:
        an idle stream is not a late one); while it works through more than a batch, the age of the
        last event it delivered; from a failure until an XREAD succeeds again (reconnecting included),
        how long it has been cut off."""
        now_ms = time.time() * 1000
        position = parse_stream_id(self._last_id) if self._last_id else None
        if self._down_since:
            lag_ms: int | None = int(now_ms - self._down_since * 1000)
        elif self._caught_up:
            lag_ms = 0
        elif position and position[0]:
            lag_ms = max(0, int(now_ms - position[0]))
        else:
            lag_ms = None
        return {"kind": self.kind, "state": "ok" if self._connected else "degraded", "url": self.url,
                "stream": self.key, "last_delivered_id": self._last_id, "connected": self._connected,
                "last_error": self._last_error, "reconnects": self._reconnects, "lag_ms": lag_ms}
