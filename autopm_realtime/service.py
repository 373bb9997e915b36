"""Everything one server process runs, built from `Settings`: broker, hub, projects and their sources.

The standalone command and the Jupyter extension both build a `RealtimeService`, mount the same handlers
on it (`web.app.routes`) and start and stop it with their server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .brokers import Broker
from .brokers.memory import MemoryBroker
from .config import Settings
from .events import EventTypeRegistry, parse_extra_event_type
from .connection import QueueLimits
from .hub import Hub, PumpLimits
from .metrics import ServerMetrics
from .ratelimit import ConnectionLimiter, KeyedBuckets, MessageRateGuard, RateLimitStats
from .project import Project, ProjectCatalog, ProjectSources, source_options
from .sources import SourceContext

if TYPE_CHECKING:
    from .tokens import TokenVerifier
    from .ownership import SourceOwnership

log = logging.getLogger(__name__)


def make_verifier(settings: Settings) -> TokenVerifier | None:
    """The JWT verifier the settings ask for; None when auth is off. Raises ValueError on a bad key."""
    if not settings.jwt_enabled:
        return None
    from .tokens import TokenVerifier   # PyJWT and cryptography load only when auth is on

    public_key = Path(settings.jwt_public_key).read_text() if settings.jwt_public_key else None
    return TokenVerifier(secret=settings.jwt_secret, public_key=public_key,
                         audience=settings.jwt_audience, issuer=settings.jwt_issuer)


def make_broker(settings: Settings) -> Broker:
    if settings.uses_redis:
        from .brokers.redis import RedisBroker

        return RedisBroker(settings.broker, history_size=settings.history, prefix=settings.redis_prefix)
    return MemoryBroker(settings.history)


class RealtimeService:
    """`run_sources=False` serves events without watching, snapshotting or tracking any project (tests of
    the transports use it; so could a relay that only forwards published events)."""

    def __init__(self, settings: Settings, broker: Broker | None = None, *, run_sources: bool = True) -> None:
        self.settings = settings
        self.registry = EventTypeRegistry(parse_extra_event_type(spec) for spec in settings.event_types)
        self.broker = broker or make_broker(settings)
        self.verifier = make_verifier(settings)
        self.rate_stats = RateLimitStats()
        self.connection_limiter = ConnectionLimiter(settings.max_connections,
                                                    settings.max_connections_per_address,
                                                    stats=self.rate_stats)
        self.publish_buckets = KeyedBuckets(settings.publish_rate, settings.publish_burst,
                                            settings.rate_limit_keys, stats=self.rate_stats)
        self.hub = Hub(self.broker, self.registry, heartbeat_seconds=settings.heartbeat,
                       limits=QueueLimits(settings.queue_max_messages, settings.queue_max_bytes),
                       pump=PumpLimits(settings.fanout_slice_ms / 1000, settings.fanout_backlog,
                                      settings.write_interval_ms / 1000))
        self.projects = ProjectCatalog(Project(spec.id, spec.path) for spec in settings.projects)
        self.sources: list[ProjectSources] = []
        if run_sources:
            options = source_options(settings)
            self.sources = [ProjectSources(SourceContext(project, self.broker, self.registry,
                                                         settings.max_event_bytes), options)
                            for project in self.projects.configured.values()]
        self.metrics = ServerMetrics(self.hub, self.broker, self.rate_stats)
        self.started_at = time.time()
        self._remove_observer: Callable[[], None] | None = None
        self._ownerships: dict[str, SourceOwnership] = {}   # project id -> its lock, with Redis
        self._owner_client: Any = None

    async def start(self) -> None:
        await self.broker.start()
        self._remove_observer = self.broker.add_listener(self.projects.observe)
        self.hub.start()
        if self.settings.uses_redis and self.sources:
            self._start_owned_sources()
        else:
            for sources in self.sources:
                await sources.start()

    def _start_owned_sources(self) -> None:
        """With a shared broker, several processes may serve a project: its sources run in the one
        holding its lock (ownership.py)."""
        import redis.asyncio as aioredis

        from .ownership import SourceOwnership

        self._owner_client = aioredis.from_url(self.settings.broker, socket_timeout=self.settings.owner_ttl / 4,
                                               socket_connect_timeout=self.settings.owner_ttl / 4)
        for sources in self.sources:
            key = f"{self.settings.redis_prefix}:owner:{sources.project_id}"
            ownership = SourceOwnership(self._owner_client, key, self.settings.owner_ttl,
                                        sources.start, sources.stop)
            ownership.start()
            self._ownerships[sources.project_id] = ownership

    async def sources_ready(self, timeout: float) -> list[str]:
        """Wait, at most `timeout` seconds, until this process's sources watch their trees; returns the
        projects not watching, each with why ("still starting", "gave up"). With a shared broker the
        sources start when their lock is won (ownership.py), so there is nothing to wait for here."""
        watched = [sources for sources in self.sources if sources.watcher is not None]
        if self._ownerships or not watched:
            return []
        waits = {asyncio.ensure_future(sources.ready()): sources.project_id for sources in watched}
        log.info("waiting up to %g s for the file watchers of %s to watch their trees", timeout,
                 ", ".join(waits.values()))
        try:
            await asyncio.wait(waits, timeout=timeout)
            return sorted(f"{project} (gave up)" if wait.done() else f"{project} (still starting)"
                          for wait, project in waits.items() if not wait.done() or not wait.result())
        finally:
            for wait in waits:
                wait.cancel()   # those still waiting; ready() is shielded, so the watcher goes on starting

    def owns_sources(self, project_id: str) -> bool:
        """Whether this process runs the project's sources (always, without a shared broker)."""
        if not self._ownerships:
            return any(sources.project_id == project_id for sources in self.sources)
        ownership = self._ownerships.get(project_id)
        return ownership is not None and ownership.owner

    def message_rate_guard(self) -> MessageRateGuard:
        """A new WebSocket's inbound message limit."""
        return MessageRateGuard(self.settings.ws_message_rate, self.settings.ws_message_burst,
                                self.settings.ws_rate_violations, stats=self.rate_stats)

    async def stop(self) -> None:
        """Sources first, so nothing is published into a hub or broker that is going away."""
        if self._ownerships:
            for ownership in self._ownerships.values():
                await ownership.stop()
            await self._owner_client.aclose()
        else:
            for sources in self.sources:
                await sources.stop()
        self.hub.stop()
        self.metrics.close()
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None
        await self.broker.stop()
