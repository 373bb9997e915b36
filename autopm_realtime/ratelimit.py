"""Rate and connection limits: small, bounded, and driven by an injectable clock so tests need no sleeps.

- `TokenBucket`: `rate` tokens per second refill a bucket holding at most `burst`; one per WebSocket
  connection, so it is a handful of slots.
- `KeyedBuckets`: one bucket per key (a token subject, a client address) for publishes, at most `max_keys`
  of them (least recently used forgotten first).
- `MessageRateGuard`: a connection's inbound messages: allow, reject with an error, or close (1008).
- `ConnectionLimiter`: open connections in total and per client address.
- `RateLimitStats`: the counters every limiter above adds its refusals to, read by `metrics.py`.

Limits are constructor parameters. A `rate` of 0 means "no limit" (everything is allowed and nothing is
stored), as does 0 for either bound of `ConnectionLimiter`; negative values raise ValueError.

The buckets are kept as GCRA ("generic cell rate algorithm"), which is a token bucket stored as one
number: the time at which the bucket will be full again. `tokens = burst - (full_at - now) * rate`, so a
take of n tokens moves `full_at` n/rate seconds later, and it is allowed while `full_at` stays within
burst/rate seconds of now. Refill needs no bookkeeping and a key is a single float.
"""

from __future__ import annotations

import collections
import enum
import math
import time
from dataclasses import dataclass
from typing import Callable, Hashable

Clock = Callable[[], float]

# Time (seconds) by which a take may be early and still succeed, and below which `retry_after()` says 0:
# waiting exactly `retry_after()` must be enough, whatever floating point does to
# `full_at + 1/rate - now`. A nanosecond is at most `rate * 1e-9` tokens of credit: nothing.
_SLACK = 1e-9

TOO_MANY_CONNECTIONS = "too many connections"
TOO_MANY_FROM_ADDRESS = "too many connections from this address"


@dataclass(slots=True)
class RateLimitStats:
    """Monotonic counts of refusals since start, shared by the limiters of one server (the metrics read
    them as `autopm_rate_limit_rejections_total{kind}`)."""

    ws_messages_rejected: int = 0   # inbound WebSocket messages not acted on (REJECT and CLOSE verdicts)
    ws_closed_for_rate: int = 0     # WebSocket connections closed 1008 for ignoring the limit
    publishes_rejected: int = 0     # takes refused by `KeyedBuckets` (publishes per subject / address)
    connections_refused: int = 0    # `ConnectionLimiter.acquire` refusals, either reason
    publish_keys_evicted: int = 0   # keys `KeyedBuckets` forgot to stay within `max_keys`

    def by_kind(self) -> dict[str, int]:
        """Rejections by the `kind` label of the metric."""
        return {"ws_message": self.ws_messages_rejected, "ws_close": self.ws_closed_for_rate,
                "publish": self.publishes_rejected, "connection": self.connections_refused}


def _check_rate(rate: float, burst: float) -> None:
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be a finite number >= 0 (0: no limit), not {rate!r}")
    if not math.isfinite(burst) or burst < 0:
        raise ValueError(f"burst must be a finite number >= 0, not {burst!r}")
    if rate > 0 and burst < 1:
        raise ValueError(f"burst must be at least 1 when a rate is set, not {burst!r}")


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, not {value!r}")


class TokenBucket:
    """At most `burst` at once, `rate` per second sustained. Starts full. `rate` 0: no limit."""

    __slots__ = ("_interval", "_window", "_full_at", "_clock")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        _check_rate(rate, burst)
        self._interval = 1.0 / rate if rate else 0.0   # seconds one token takes to come back
        self._window = burst * self._interval          # how far ahead of now `full_at` may be
        self._clock = clock
        self._full_at = -math.inf                      # full since forever

    def take(self, n: float = 1) -> bool:
        """Take `n` tokens if there are that many; on False nothing was taken."""
        if not self._interval:
            return True
        now = self._clock()
        after = max(self._full_at, now) + n * self._interval
        if after - now > self._window + _SLACK:
            return False
        self._full_at = after
        return True

    def retry_after(self) -> float:
        """Seconds until one token is available (0.0 when one is now)."""
        if not self._interval:
            return 0.0
        wait = self._full_at - self._clock() - (self._window - self._interval)
        return wait if wait > _SLACK else 0.0

    @property
    def tokens(self) -> float:
        """Tokens available now (for tests and debugging)."""
        if not self._interval:
            return math.inf
        return (self._window - max(0.0, self._full_at - self._clock())) / self._interval


class KeyedBuckets:
    """A `TokenBucket` per key, for at most `max_keys` keys (>= 1).

    Keys are kept least recently used first; a new key beyond `max_keys` makes the least recently used
    one forgotten, and a forgotten key comes back with a full bucket. That is the price of the bound: a
    client can only profit from it if more than `max_keys` distinct keys are active within one refill
    time (burst/rate seconds), because the least recently used key is also the one that has been
    refilling the longest and is usually full anyway. Size `max_keys` above the number of subjects or
    addresses expected to publish within that time. Evictions are counted in
    `stats.publish_keys_evicted`, refusals in `stats.publishes_rejected`.
    """

    def __init__(self, rate: float, burst: float, max_keys: int, clock: Clock = time.monotonic, *,
                 stats: RateLimitStats | None = None) -> None:
        _check_rate(rate, burst)
        _check_count("max_keys", max_keys, 1)
        self._interval = 1.0 / rate if rate else 0.0
        self._window = burst * self._interval
        self.max_keys = max_keys
        self._clock = clock
        self.stats = stats if stats is not None else RateLimitStats()
        self._full_at: collections.OrderedDict[Hashable, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._full_at)

    def take(self, key: Hashable, n: float = 1) -> bool:
        if not self._interval:
            return True
        now = self._clock()
        full_at = self._full_at.get(key)
        if full_at is None:
            full_at = now
            if len(self._full_at) >= self.max_keys:
                self._full_at.popitem(last=False)
                self.stats.publish_keys_evicted += 1
        else:
            self._full_at.move_to_end(key)
            full_at = max(full_at, now)
        after = full_at + n * self._interval
        if after - now > self._window + _SLACK:
            self._full_at[key] = full_at
            self.stats.publishes_rejected += 1
            return False
        self._full_at[key] = after
        return True

    def retry_after(self, key: Hashable) -> float:
        """Seconds until `key` may take one token; does not count as a use of the key."""
        full_at = self._full_at.get(key)
        if full_at is None:
            return 0.0
        wait = full_at - self._clock() - (self._window - self._interval)
        return wait if wait > _SLACK else 0.0


class Verdict(enum.Enum):
    ALLOW = "allow"     # act on the message
    REJECT = "reject"   # do not act on it; answer with a `rate_limited` error and keep the connection
    CLOSE = "close"     # do not act on it; close the connection with 1008 (policy violation)


class MessageRateGuard:
    """Inbound messages of one WebSocket connection: `rate` per second, bursts of `burst`.

    A message over the rate is rejected. A connection is closed when it sends more than `max_violations`
    messages in a row that are all rejected, i.e. `max_violations` rejections are answered with an
    error, and the next message, if it arrives before a token has come back, closes the connection.
    Any allowed message starts the count again. So a client that slows down when it sees the error
    never gets closed, and one that ignores it is closed after `max_violations + 1` refused messages;
    one that keeps just over the rate is served at the rate and rejected for the rest (the limit holds
    either way). `max_violations` 0 closes on the first message over the rate; `rate` 0: no limit.
    """

    __slots__ = ("_bucket", "_max_violations", "_violations", "_stats")

    def __init__(self, rate: float, burst: float, max_violations: int, clock: Clock = time.monotonic, *,
                 stats: RateLimitStats | None = None) -> None:
        _check_count("max_violations", max_violations)
        self._bucket = TokenBucket(rate, burst, clock)
        self._max_violations = max_violations
        self._violations = 0
        self._stats = stats

    @property
    def violations(self) -> int:
        """Messages rejected since the last one allowed."""
        return self._violations

    def retry_after(self) -> float:
        """For the `rate_limited` error: seconds until a message would be allowed."""
        return self._bucket.retry_after()

    def check(self) -> Verdict:
        if self._bucket.take():
            self._violations = 0
            return Verdict.ALLOW
        self._violations += 1
        stats = self._stats
        if stats is not None:
            stats.ws_messages_rejected += 1
        if self._violations > self._max_violations:
            if stats is not None:
                stats.ws_closed_for_rate += 1
            return Verdict.CLOSE
        return Verdict.REJECT


class ConnectionLimiter:
    """Open connections: at most `max_total`, and at most `max_per_address` from one client address
    (0: no limit on that count).

    Call `acquire` before admitting a connection and `release` exactly once for each admitted one, when
    it closes. A release of an address with no admitted connection is ignored, so counts never go
    negative; addresses are forgotten when their count reaches zero, so the table holds no more entries
    than there are open connections.
    """

    __slots__ = ("max_total", "max_per_address", "_total", "_by_address", "stats")

    def __init__(self, max_total: int, max_per_address: int, *,
                 stats: RateLimitStats | None = None) -> None:
        _check_count("max_total", max_total)
        _check_count("max_per_address", max_per_address)
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._total = 0
        self._by_address: dict[str, int] = {}
        self.stats = stats if stats is not None else RateLimitStats()

    @property
    def total(self) -> int:
        return self._total

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def __len__(self) -> int:
        """Addresses with at least one open connection."""
        return len(self._by_address)

    def acquire(self, address: str) -> str | None:
        """None when the connection is admitted (and counted); otherwise the reason it is refused."""
        if self.max_total and self._total >= self.max_total:
            self.stats.connections_refused += 1
            return TOO_MANY_CONNECTIONS
        held = self._by_address.get(address, 0)
        if self.max_per_address and held >= self.max_per_address:
            self.stats.connections_refused += 1
            return TOO_MANY_FROM_ADDRESS
        self._by_address[address] = held + 1
        self._total += 1
        return None

    def release(self, address: str) -> None:
        held = self._by_address.get(address, 0)
        if held <= 0:
            return
        if held == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = held - 1
        self._total -= 1
