"""Which process of a cluster runs a project's sources: the one holding the project's Redis lock.

Several server processes may serve one project (`--workers`, or several hosts). Its watcher, auto-commit
and progress tracker must run in exactly one of them, or every change would be reported and committed
several times. Each process tries to take `<prefix>:owner:<project>` with `SET NX PX ttl`; the holder
renews it every third of the TTL and runs the sources. If the holder dies, its lock expires after at most
one TTL and another process takes over. A holder that cannot renew (Redis unreachable, or the lock taken
after an expiry) stops its sources as soon as it can no longer be sure it holds the lock, so two owners
overlap for at most the time a renewal takes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .brokers.redis import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_OWNER_TTL_SECONDS = 10.0

# Renew or release only a lock this process still holds (compare and act in one step).
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SourceOwnership:
    """Runs `start_sources` while this process holds the project's lock and `stop_sources` when it
    loses it or stops."""

    def __init__(self, client: aioredis.Redis, key: str, ttl_seconds: float,
                 start_sources: Callable[[], Awaitable[None]],
                 stop_sources: Callable[[], Awaitable[None]]) -> None:
        if ttl_seconds <= 0:
            raise ValueError("the owner lock's TTL must be positive")
        self.key = key
        self.ttl_seconds = ttl_seconds
        self.owner = False
        self._client = client
        self._token = secrets.token_hex(8)
        self._start_sources = start_sources
        self._stop_sources = stop_sources
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"owner {self.key}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)   # not just cancel(): see cancel_and_wait
            self._task = None
        if self.owner:
            await self._give_up()
            try:
                await self._client.eval(RELEASE_SCRIPT, 1, self.key, self._token)
            except RedisError as error:   # the lock then expires by itself within one TTL
                log.warning("could not release %s: %s", self.key, error)

    async def _run(self) -> None:
        interval = self.ttl_seconds / 3
        confirmed_at = 0.0   # monotonic time of the last successful take or renewal
        while True:
            try:
                if self.owner:
                    renewed = await self._client.eval(RENEW_SCRIPT, 1, self.key, self._token,
                                                      int(self.ttl_seconds * 1000))
                    if renewed:
                        confirmed_at = time.monotonic()
                    else:
                        log.warning("lost %s to another process; stopping this project's sources", self.key)
                        await self._give_up()
                elif await self._client.set(self.key, self._token, nx=True,
                                            px=int(self.ttl_seconds * 1000)):
                    confirmed_at = time.monotonic()
                    log.info("took %s; running this project's sources here", self.key)
                    self.owner = True
                    await self._start_sources()
            except RedisError as error:
                # Renewals come every third of the TTL: after two misses, stop while the lock still
                # holds, a third of the TTL before another process may take it.
                if self.owner and time.monotonic() - confirmed_at >= self.ttl_seconds / 2:
                    log.warning("cannot renew %s (%s); stopping this project's sources before the lock "
                                "can expire", self.key, error)
                    await self._give_up()
            await asyncio.sleep(interval)

    async def _give_up(self) -> None:
        self.owner = False
        await self._stop_sources()
